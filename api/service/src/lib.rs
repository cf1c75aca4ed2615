//! chaserfs workspace service: the rules of workspaces, snapshots, sessions, imports and
//! archives, accounts and their limits, over the engine, with no HTTP types (the `chaserfs-http`
//! crate maps them onto routes). `model` holds what is stored, served and accepted; `service`
//! is the core every operation shares, and each operation lives with its concern.

pub mod accounts;
pub mod archive;
mod background;
pub mod config;
pub mod error;
pub mod import;
mod index;
mod limits;
pub mod metrics;
pub mod model;
pub mod mountpoint;
pub mod names;
pub mod pages;
pub mod service;
pub mod sessions;
pub mod snapshots;
pub mod takeover;
mod warm;
pub mod workspaces;
