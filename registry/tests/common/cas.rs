//! A real Xet CAS server for tests and benchmarks: xet-client's `LocalServer` (feature
//! `simulation`), in memory, on a runtime of its own.

/// Starts the server; returns its endpoint (`http://127.0.0.1:PORT`).
pub fn start_cas() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use xet_client::cas_client::{LocalServer, LocalServerConfig};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let ctx = xet_runtime::core::XetContext::default().expect("xet context");
            let server = LocalServer::new(
                ctx,
                LocalServerConfig {
                    in_memory: true,
                    port,
                    ..LocalServerConfig::default()
                },
            )
            .await
            .expect("CAS server");
            tx.send(format!("http://127.0.0.1:{port}")).expect("send");
            let (_keep, stop) = tokio::sync::oneshot::channel::<()>();
            server
                .serve_until_stopped(listener, stop)
                .await
                .expect("serve");
        });
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("CAS server")
}
