//! Integration tests against real brokers (one binary; run with `bash deploy/dev/test.sh`).

mod amqp;
mod bench_smoke;
mod cli;
mod common;
mod contract;
mod dedupe;
mod dedupe_postgres;
mod deploy;
mod egress;
mod egress_dead_letter;
mod egress_process;
mod embedded;
mod fakes;
mod fuzz;
mod hostile;
mod kafka_ingress;
mod openapi;
mod order;
mod partition;
mod poll;
mod producer;
mod proxy;
mod receiver;
mod supervision;
mod tls;
mod token;
