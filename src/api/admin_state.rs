//! What every admin handler shares (the admin routes of admin.rs, rollout_admin.rs and fleet_admin.rs, and the
//! dashboard's).

use super::dashboard::sessions::Sessions;
use super::dashboard::traffic::Traffic;
use crate::lifecycle::Lifecycle;
use crate::net::shutdown::ShutdownSignal;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone)]
pub struct AdminState {
    pub lifecycle: Lifecycle,
    pub rollouts: crate::rollout::Rollouts,
    /// Fleet mode: flips and rollbacks go to every replica.
    pub fleet: Option<crate::fleet::Fleet>,
    /// The operator token: may do everything.
    pub token: Arc<String>,
    /// The viewer token (`--admin-viewer-token`): may look at everything and change nothing.
    pub viewer_token: Option<Arc<String>>,
    /// The dashboard's sign-in sessions.
    pub sessions: Sessions,
    /// Traffic per slot over the last minutes (the dashboard's charts).
    pub traffic: Traffic,
    /// The model root (the dashboard's load picker lists it).
    pub models_dir: PathBuf,
    /// The listener is on a loopback address: only requests addressed to a loopback name are answered.
    pub loopback_only: bool,
    /// Places for the dashboard's live feeds (each holds one while it streams).
    pub feeds: Arc<tokio::sync::Semaphore>,
    /// Event followers close when the server starts shutting down.
    pub shutdown: ShutdownSignal,
}
