//! chaserfs workspace service (accounts, workspaces, sessions and their mounts) and its HTTP
//! layer. `service` has the rules and no HTTP types; `http` maps them onto axum routes.

pub mod http;
pub mod service;
