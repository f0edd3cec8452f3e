//! What every admin handler shares (the admin routes of admin.rs, rollout_admin.rs and fleet_admin.rs).

use crate::lifecycle::Lifecycle;
use crate::net::shutdown::ShutdownSignal;
use std::sync::Arc;

#[derive(Clone)]
pub struct AdminState {
    pub lifecycle: Lifecycle,
    pub rollouts: crate::rollout::Rollouts,
    /// Fleet mode: flips and rollbacks go to every replica.
    pub fleet: Option<crate::fleet::Fleet>,
    pub token: Arc<String>,
    /// Event followers close when the server starts shutting down.
    pub shutdown: ShutdownSignal,
}
