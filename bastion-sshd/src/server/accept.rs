//! The listening sockets and the accept loop: admission before russh sees a
//! byte, and the connections that wait for an unauthenticated slot.

use super::*;

/// Binds every listen address. The default is `[::]:22` accepting IPv6 and
/// IPv4, or `0.0.0.0:22` on hosts (and containers) without IPv6.
pub(super) fn bind_all(listen: &Listen) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let sockets = match listen {
        Listen::Default => match bind(Listen::default_dual_stack(), false) {
            Ok(l) => vec![l],
            Err(e) => {
                warn!(event = "server.ipv6_unavailable", "cannot listen on [::]:22 ({e}); listening on IPv4 only");
                vec![bind(Listen::default_ipv4(), false).context("listen on 0.0.0.0:22")?]
            }
        },
        Listen::Explicit(addrs) => addrs
            .iter()
            .map(|addr| {
                // `[::]:P` also takes IPv4, unless `0.0.0.0:P` is listed too.
                let v6only = !addr.ip().is_unspecified()
                    || addrs.iter().any(|o| o.is_ipv4() && o.ip().is_unspecified() && o.port() == addr.port());
                bind(*addr, v6only).with_context(|| format!("listen on {addr}"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    Ok(sockets)
}

fn bind(addr: SocketAddr, v6only: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6only)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts connections on one listener until shutdown.
pub(super) struct AcceptLoop {
    pub(super) listener: TcpListener,
    pub(super) config: Arc<Config>,
    pub(super) shared: Arc<Shared>,
    pub(super) deadlines: Arc<Deadlines>,
    /// Connection limits and per-source penalties, shared by all listeners.
    pub(super) admission: Arc<Admission>,
    /// New connections that may wait for an unauthenticated slot at once
    /// (`--max-startups` of them), shared by all listeners: each holds a socket.
    pub(super) waiting: Arc<tokio::sync::Semaphore>,
    /// Source of connection ids, shared by all listeners.
    pub(super) ids: Arc<AtomicU64>,
    /// Some(deadline) once the server is stopping.
    pub(super) drain: Drain,
    /// Dropped when the loop ends; cloned into every connection task.
    pub(super) done: mpsc::Sender<()>,
}

impl AcceptLoop {
    pub(super) async fn run(mut self) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                _ = stopping(&mut self.drain) => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    let task = ConnectionTask {
                        config: self.config.clone(),
                        shared: self.shared.clone(),
                        deadlines: self.deadlines.clone(),
                        drain: self.drain.clone(),
                        _done: self.done.clone(),
                    };
                    match self.admission.admit(peer.ip(), std::time::Instant::now()) {
                        Ok(ticket) => {
                            let id = format!("c{}", self.ids.fetch_add(1, Ordering::Relaxed) + 1);
                            tokio::spawn(task.run(ticket, stream, peer, id));
                        }
                        // Every unauthenticated slot is taken: wait (silently, as a full
                        // listen backlog would) for one to free up or to stall, up to the
                        // login grace time, a bounded number at a time.
                        Err(Refusal::TooManyStartups(_))
                            if let Ok(place) = self.waiting.clone().try_acquire_owned() =>
                        {
                            let (admission, ids) = (self.admission.clone(), self.ids.clone());
                            let until = Instant::now() + self.deadlines.login_grace_time;
                            tokio::spawn(async move {
                                let admitted = wait_for_slot(&admission, peer.ip(), until).await;
                                drop(place);
                                match admitted {
                                    Ok(ticket) => {
                                        let id = format!("c{}", ids.fetch_add(1, Ordering::Relaxed) + 1);
                                        task.run(ticket, stream, peer, id).await;
                                    }
                                    Err(refusal) => refused(peer, &refusal),
                                }
                            });
                        }
                        // Closed before a byte is sent: costs the bastion nothing more.
                        Err(refusal) => refused(peer, &refusal),
                    }
                }
                Err(e) => {
                    // Out of file descriptors or memory: wait instead of spinning,
                    // longer each time, as mini-redis does.
                    error!(event = "server.accept_error", error = %e, "accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

fn refused(peer: SocketAddr, refusal: &Refusal) {
    info!(target: "audit", event = "connection.refused", peer = %peer, reason = %refusal, limit = refusal.limit(),
        "connection from {peer} refused: {refusal}");
}

/// Admits a connection once an unauthenticated slot frees up or one of them
/// stalls (and is evicted), or refuses it at `until`.
async fn wait_for_slot(admission: &Arc<Admission>, ip: std::net::IpAddr, until: Instant) -> Result<Ticket, Refusal> {
    loop {
        let released = admission.released();
        match admission.admit(ip, std::time::Instant::now()) {
            Err(Refusal::TooManyStartups(n)) => {
                if Instant::now() >= until {
                    return Err(Refusal::TooManyStartups(n));
                }
                let next_stall = admission.next_stall().map_or(until, Instant::from_std).min(until);
                tokio::select! {
                    _ = released => {}
                    _ = tokio::time::sleep_until(next_stall) => {}
                }
            }
            other => return other,
        }
    }
}
