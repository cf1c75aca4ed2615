//! chaserfs workspace service: the rules of workspaces, snapshots, sessions, imports and
//! archives, accounts and their limits, over the engine, with no HTTP types (the `chaserfs-http`
//! crate maps them onto routes). `model` holds what is stored, served and accepted.

pub mod accounts;
pub mod archive;
pub mod error;
pub mod import;
pub mod metrics;
pub mod model;
pub mod mountpoint;
pub mod service;
pub mod sessions;
pub mod takeover;
