//! The operator's dashboard, served by teal itself on the admin listener: a sign-in page that exchanges the
//! admin or viewer token for a session cookie (pages.rs, sessions.rs), the gate every admin request passes
//! (auth.rs: bearer tokens or a session with its CSRF token; viewers change nothing; reasons audited), the page
//! and its embedded assets, a live feed of the slots, traffic, rollout, memory, fleet and audit log (feed.rs,
//! fed by the traffic sampler of traffic.rs), and the model root's listing for the load picker (models.rs).
//! Actions on the page call the same JSON admin API as every other client.

pub mod auth;
pub mod feed;
pub mod models;
pub mod origin;
pub mod pages;
pub mod sessions;
pub mod traffic;

use super::admin_state::AdminState;
use axum::routing::{get, post};
use axum::Router;

/// The dashboard's routes (the admin router adds the auth layer over them and the API alike).
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/", get(pages::index))
        .route("/index.html", get(pages::index))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/ui/assets/{name}", get(pages::asset))
        .route("/ui/stream", get(feed::stream))
        .route("/admin/models", get(models::view))
}
