//! Client-side commands of the `teal` binary (the server side is `server::run`).

pub mod admin;
mod fleet;
pub mod rollout;
