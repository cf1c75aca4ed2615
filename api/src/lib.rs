//! chaserfs workspace service and its HTTP layer. `service` (with `sessions` and `import`)
//! has the rules and no HTTP types; `http` maps them onto axum routes and the OpenAPI
//! document; `model` holds what is stored, served and accepted.

pub mod accounts;
pub mod archive;
pub mod error;
pub mod http;
pub mod import;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod mountpoint;
pub mod service;
pub mod sessions;
pub mod takeover;
