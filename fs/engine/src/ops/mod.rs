//! Operations over whole states: what changed between two ([`diff`]), a state as a tar
//! archive and back ([`archive`]), reclaiming what no state reaches ([`gc`]), and checking a
//! store's invariants ([`fsck`]).

pub mod archive;
pub mod diff;
pub mod fsck;
pub mod gc;
