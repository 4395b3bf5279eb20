//! Integration tests: one binary of modules (fast to build). Tests that need Docker or S3 use `support` to find
//! them; under `CI` a missing service is a failure, never a silent pass.

mod support;
mod tree;

mod archive_pack;
mod archive_unpack;
mod backup;
mod caps;
mod check;
mod cli;
mod daemon;
mod dump;
mod engine_api;
mod engine_path;
mod engine_restore;
mod frozen;
mod groups;
mod hooks;
mod image;
mod key;
mod layers;
mod notify;
mod prune;
mod quiesce;
mod remote;
mod restore;
mod s3;
mod signals;
mod stack;
mod storage;
mod swarm;
mod target_check;
mod ux;
mod wait;
