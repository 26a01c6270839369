//! Serves a stand-in's router on a free loopback port, on a runtime of its own (a thread),
//! so tests on blocking clients can talk to it. Shared by the stand-ins (each includes
//! this file as a module).

use std::net::SocketAddr;

/// Starts serving `app`; its address and the serving thread.
pub fn serve(app: axum::Router) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(l.local_addr().expect("addr")).expect("send");
            axum::serve(l, app).await.expect("serve");
        });
    });
    (rx.recv().expect("stand-in address"), thread)
}
