//! What every admin handler shares (the admin routes of admin.rs and rollout_admin.rs).

use crate::lifecycle::Lifecycle;
use crate::net::shutdown::ShutdownSignal;
use std::sync::Arc;

#[derive(Clone)]
pub struct AdminState {
    pub lifecycle: Lifecycle,
    pub rollouts: crate::rollout::Rollouts,
    pub token: Arc<String>,
    /// Event followers close when the server starts shutting down.
    pub shutdown: ShutdownSignal,
}
