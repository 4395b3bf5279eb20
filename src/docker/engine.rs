//! TODO
pub struct Engine;
