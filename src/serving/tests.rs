use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use super::*;

/// Answers OK and notes which thread answered.
#[derive(Clone, Default)]
struct Recorder {
    threads: Arc<Mutex<HashSet<String>>>,
}

#[tonic::async_trait]
impl Authorization for Recorder {
    async fn check(
        &self,
        _: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let name = std::thread::current().name().unwrap_or("").to_string();
        self.threads.lock().expect("lock").insert(name);
        Ok(tonic::Response::new(CheckResponse::default()))
    }
}

#[tokio::test]
async fn connections_are_served_round_robin_by_the_worker_threads() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let recorder = Recorder::default();
    let (stop, stopped) = watch::channel(false);
    let service = recorder.clone();
    let server = tokio::spawn(serve(
        2,
        crate::app::tcp_incoming(listener),
        move || {
            tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(service.clone()))
        },
        stopped,
    ));

    // Four connections, one request each: two land on each worker.
    for _ in 0..4 {
        let mut client = AuthorizationClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        client
            .check(CheckRequest::default())
            .await
            .expect("answered");
    }
    let threads = recorder.threads.lock().expect("lock").clone();
    assert_eq!(
        threads,
        HashSet::from([
            "onbehalf-serving-0".to_string(),
            "onbehalf-serving-1".to_string()
        ])
    );

    // Stopping ends the accept loop and every worker.
    stop.send(true).expect("server listening");
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("drained in time")
        .expect("joined")
        .expect("clean stop");
}

#[test]
fn zero_means_one_worker_per_core() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(count(0), cores);
    assert_eq!(count(3), 3);
}

#[test]
fn a_worker_that_has_ended_is_passed_over() {
    let (a, mut a_rx) = mpsc::unbounded_channel();
    let (b, b_rx) = mpsc::unbounded_channel();
    let (c, mut c_rx) = mpsc::unbounded_channel();
    let queues = [a, b, c];
    let mut next = 0;
    assert_eq!(hand_out(&queues, &mut next, 1), Ok(()));
    drop(b_rx);
    // Worker 1 has ended: its turn goes to worker 2, then back to 0.
    assert_eq!(hand_out(&queues, &mut next, 2), Ok(()));
    assert_eq!(hand_out(&queues, &mut next, 3), Ok(()));
    assert_eq!((a_rx.try_recv(), a_rx.try_recv()), (Ok(1), Ok(3)));
    assert_eq!(c_rx.try_recv(), Ok(2));
    drop((a_rx, c_rx));
    assert_eq!(
        hand_out(&queues, &mut next, 4),
        Err(4),
        "every worker has ended"
    );
}
