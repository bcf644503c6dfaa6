//! A TCP app for the steering tests. For each connection it first writes one line,
//! `app=<name> peer=<ip>:<port> conn=<n>` (the peer it sees, and how many connections it has
//! accepted so far), then echoes every byte until the client half-closes, and half-closes back.
use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let addrs: Vec<String> = args.collect();
    if name.is_empty() || addrs.is_empty() {
        eprintln!("usage: hermes-echo NAME ADDR...   (e.g. hermes-echo a '[::]:8080')");
        std::process::exit(64);
    }
    let accepted = Arc::new(AtomicU64::new(0));
    let listeners: Vec<TcpListener> = addrs
        .iter()
        .map(|addr| TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
        .collect();
    println!("listening on {addrs:?}");
    std::thread::scope(|scope| {
        for listener in &listeners {
            let (name, accepted) = (&name, &accepted);
            scope.spawn(move || {
                for stream in listener.incoming().flatten() {
                    let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                    let name = name.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &name, n);
                    });
                }
            });
        }
    });
}

fn serve(mut stream: TcpStream, name: &str, n: u64) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
    writeln!(stream, "app={name} peer={peer} conn={n}")?;
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return stream.shutdown(Shutdown::Write);
        }
        stream.write_all(&buffer[..read])?;
    }
}
