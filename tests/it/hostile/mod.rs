//! The hostile battery: model files, public requests, admin calls, sessions, connections and shutdown, each sent
//! the way an attacker (or a broken client or model export) would, against a real server. Every case expects a
//! precise status or a failed standby with its reason; after every case the server is still running, the admin
//! API answers within a second, and the live slot's greedy answer is unchanged (`Battery::check`).

mod battery;
mod connections;
mod files;
mod kserve;
mod model_files;
mod requests;
mod sessions;
mod shutdown;
