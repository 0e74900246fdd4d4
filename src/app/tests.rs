use super::*;

#[tokio::test]
async fn a_server_that_ends_says_why() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let failed = spawn_server(
        "gRPC",
        async { anyhow::bail!("no more sockets") },
        tx.clone(),
    );
    assert!(failed.await.expect("joined").is_err());
    assert_eq!(
        rx.recv().await.as_deref(),
        Some("the gRPC server failed: no more sockets")
    );

    let stopped = spawn_server("admin", async { Ok(()) }, tx.clone());
    assert!(stopped.await.expect("joined").is_ok());
    assert_eq!(rx.recv().await.as_deref(), Some("the admin server stopped"));

    let panicked = spawn_server(
        "gRPC",
        async {
            #[allow(clippy::panic)]
            if std::hint::black_box(true) {
                panic!("a bug");
            }
            Ok(())
        },
        tx,
    );
    assert!(panicked.await.is_err(), "the panic reaches the join handle");
    assert_eq!(rx.recv().await.as_deref(), Some("the gRPC server panicked"));
}
