//! Integration tests: one binary of modules (fast to build). Tests that need Docker or S3 use `support` to find
//! them; under `CI` a missing service is a failure, never a silent pass.

mod support;
mod tree;

mod archive_pack;
mod archive_unpack;
mod backup;
mod cli;
mod frozen;
mod key;
mod layers;
mod prune;
mod quiesce;
mod restore;
mod s3;
mod signals;
mod storage;
mod ux;
