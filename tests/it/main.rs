//! Integration tests against real brokers (one binary; run with `bash deploy/dev/test.sh`).

mod cli;
mod common;
mod kafka_ingress;
