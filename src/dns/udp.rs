//! DNS over UDP: one socket and one thread per CPU on each listen address (sockets
//! share the port with SO_REUSEPORT, so the kernel spreads clients over them), each
//! receiving and sending in batches with `recvmmsg`/`sendmmsg`.
//!
//! These threads are not tokio's: DNS answers never queue behind registration work or
//! each other's futures. A query the fast path leaves to the Catalog is handed to the
//! tokio runtime, which sends its response on the same socket.

use std::io;
use std::mem::size_of;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::runtime::Handle;
use tracing::{error, warn};

use super::front::{Fallback, Reply, Responder, Transport};
use super::rate_limit::{truncated, RateLimitSettings, RateLimiter, Verdict};
use super::wire::{Scratch, MAX_UDP_RESPONSE};
use crate::metrics;
use crate::throttle::LogThrottle;

/// Datagrams taken or sent per system call, at most.
const BATCH: usize = 32;
/// Receive buffer per datagram: queries are small; a larger datagram is cut short by
/// the kernel (MSG_TRUNC) and dropped.
const RECEIVE_BUFFER: usize = 4096;
/// How often a waiting thread looks up to see whether it should stop.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Queries handed to the Catalog and not answered yet, at most; more are dropped, so a
/// flood of odd packets cannot pile up tasks.
const MAX_FALLBACKS_IN_FLIGHT: usize = 1024;
/// Seconds between two warnings about queries dropped for [`MAX_FALLBACKS_IN_FLIGHT`].
const CATALOG_BUSY_WARNING_INTERVAL: u64 = 10;

/// The UDP threads of every listen address.
pub struct UdpFront {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// What each UDP thread shares.
#[derive(Clone)]
pub struct Shared {
    pub responder: Arc<Responder>,
    pub fallback: Fallback,
    pub runtime: Handle,
    /// `dns.rate_limit`, when set: each thread keeps its own buckets.
    pub rate_limit: Option<RateLimitSettings>,
    fallbacks_in_flight: Arc<AtomicUsize>,
}

impl Shared {
    pub fn new(
        responder: Arc<Responder>,
        fallback: Fallback,
        runtime: Handle,
        rate_limit: Option<RateLimitSettings>,
    ) -> Shared {
        Shared {
            responder,
            fallback,
            runtime,
            rate_limit,
            fallbacks_in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Binds `count` UDP sockets to `address` with SO_REUSEPORT. With port 0 the first
/// socket's port is used for the others.
pub fn bind(address: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    let mut sockets: Vec<UdpSocket> = Vec::with_capacity(count);
    let mut address = address;
    for _ in 0..count.max(1) {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        socket.set_reuse_port(true)?;
        if address.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&SockAddr::from(address))?;
        socket.set_read_timeout(Some(STOP_CHECK_INTERVAL))?;
        let socket = UdpSocket::from(socket);
        address = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

impl UdpFront {
    /// Starts one thread per socket.
    pub fn start(sockets: Vec<UdpSocket>, shared: Shared) -> io::Result<UdpFront> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            let shared = shared.clone();
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("svcdns-udp-{index}"))
                .spawn(move || serve(Arc::new(socket), shared, stop))?;
            threads.push(thread);
        }
        Ok(UdpFront { threads, stop })
    }

    /// Stops every thread and waits for them.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            // A thread that panicked has already been reported by the panic hook.
            let _ = thread.join();
        }
    }
}

/// One thread's loop: receive a batch, answer what the fast path can, send the batch.
fn serve(socket: Arc<UdpSocket>, shared: Shared, stop: Arc<AtomicBool>) {
    let mut incoming = Incoming::new();
    let mut outgoing = Outgoing::new();
    let mut scratch = Scratch::default();
    let mut errors = ErrorLog::default();
    let mut limiter = shared.rate_limit.map(RateLimiter::new);
    while !stop.load(Ordering::Relaxed) {
        let received = match incoming.receive(&socket) {
            Ok(received) => received,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                errors.report("receiving DNS over UDP", &e);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let received_at = Instant::now();
        for index in 0..received {
            let Some((packet, source)) = incoming.query(index) else {
                continue;
            };
            // A bug that a packet triggers must cost that packet, not the thread: the
            // scratch space is reset by every response, so the loop can go on.
            let answered = panic::catch_unwind(AssertUnwindSafe(|| {
                match shared
                    .responder
                    .respond(packet, Transport::Udp, &mut scratch)
                {
                    Reply::Send(response) => {
                        match limit(&mut limiter, &source, received_at) {
                            Verdict::Send => {
                                metrics::count_answer(response, Transport::Udp);
                                outgoing.queue(source, response);
                            }
                            Verdict::Slip => {
                                if let Some(cut) = truncated(response) {
                                    metrics::count_answer(&cut, Transport::Udp);
                                    outgoing.queue(source, &cut);
                                }
                            }
                            Verdict::Drop => {}
                        }
                        false
                    }
                    // A query for the slow path spends its client's token up front;
                    // over the limit it is dropped (there is no answer yet to slip).
                    Reply::Fallback => limit(&mut limiter, &source, received_at) == Verdict::Send,
                    Reply::Ignore => false,
                }
            }));
            match answered {
                Ok(false) => {}
                Ok(true) => {
                    if let Some(source) = source.address() {
                        hand_to_catalog(&shared, &socket, packet.to_vec(), source, received_at);
                    }
                }
                Err(_) => {
                    metrics::dropped_panic();
                    errors.report_panic(packet);
                }
            }
        }
        // The batch's answers leave together: each waited this long.
        metrics::observe_latency(
            Transport::Udp,
            received_at.elapsed(),
            outgoing.queued as u64,
        );
        if let Err(e) = outgoing.send(&socket) {
            if !is_transient(&e) {
                errors.report("sending DNS over UDP", &e);
            }
        }
    }
}

/// The rate limiter's verdict on a response to `source`: always `Send` without one.
fn limit(limiter: &mut Option<RateLimiter>, source: &Source, now: Instant) -> Verdict {
    let (Some(limiter), Some(address)) = (limiter.as_mut(), source.address()) else {
        return Verdict::Send;
    };
    let verdict = limiter.check(address.ip(), now);
    if verdict != Verdict::Send {
        metrics::rate_limited(verdict == Verdict::Slip);
    }
    verdict
}

/// Answers a query on the tokio runtime through the Catalog, and sends the response.
fn hand_to_catalog(
    shared: &Shared,
    socket: &Arc<UdpSocket>,
    packet: Vec<u8>,
    source: SocketAddr,
    received_at: Instant,
) {
    let Some(slot) = FallbackSlot::take(&shared.fallbacks_in_flight) else {
        metrics::dropped_catalog_busy();
        warn_catalog_busy();
        return;
    };
    let fallback = shared.fallback.clone();
    let socket = socket.clone();
    shared.runtime.spawn(async move {
        // Held until the task ends, however it ends: a panic in the Catalog (which
        // tokio catches) must not keep the slot taken for good.
        let _slot = slot;
        if let Some(response) = fallback.answer(packet, source, Transport::Udp).await {
            metrics::answered(&response, Transport::Udp, received_at.elapsed());
            // The socket is blocking but UDP sends do not wait for the peer; a failed
            // send is a lost datagram, which clients retry.
            let _ = socket.send_to(&response, source);
        }
    });
}

/// One of the [`MAX_FALLBACKS_IN_FLIGHT`] places for a query waiting for the Catalog;
/// given back when dropped.
struct FallbackSlot(Arc<AtomicUsize>);

impl FallbackSlot {
    fn take(in_flight: &Arc<AtomicUsize>) -> Option<FallbackSlot> {
        if in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_FALLBACKS_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(FallbackSlot(in_flight.clone()))
    }
}

impl Drop for FallbackSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A dropped query is silence to its client: say so in the log (at most every
/// [`CATALOG_BUSY_WARNING_INTERVAL`] seconds), as well as in the metric.
fn warn_catalog_busy() {
    static THROTTLE: LogThrottle = LogThrottle::new(CATALOG_BUSY_WARNING_INTERVAL);
    if let Some(suppressed) = THROTTLE.admit() {
        warn!(
            waiting = MAX_FALLBACKS_IN_FLIGHT,
            dropped_since_last_warning = suppressed + 1,
            "UDP queries for the slow path (other opcodes, names outside our zones, transfers) dropped: too many already wait for an answer"
        );
    }
}

fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Logs socket errors and panicking queries, at most one line per second per thread.
#[derive(Default)]
struct ErrorLog {
    last: Option<std::time::Instant>,
}

impl ErrorLog {
    fn report(&mut self, doing: &str, error: &io::Error) {
        if self.ready() {
            warn!(error = %error, "{doing}");
        }
    }

    /// Reports a query whose answer panicked (a bug), with its bytes to reproduce it.
    fn report_panic(&mut self, packet: &[u8]) {
        if self.ready() {
            let hex: String = packet
                .iter()
                .take(512)
                .map(|b| format!("{b:02x}"))
                .collect();
            error!(packet = %hex, "answering a DNS query panicked; the query was dropped (please report this)");
        }
    }

    fn ready(&mut self) -> bool {
        let now = std::time::Instant::now();
        let ready = self
            .last
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1));
        if ready {
            self.last = Some(now);
        }
        ready
    }
}

/// A zeroed value on the heap, without building it on the stack first (the batches
/// are hundreds of KiB).
///
/// # Safety
/// All-zero bytes must be a valid `T`.
unsafe fn boxed_zeroed<T>() -> Box<T> {
    let layout = std::alloc::Layout::new::<T>();
    // SAFETY: `T` is not zero-sized here (callers pass the batch types); a null
    // pointer means allocation failed, which `handle_alloc_error` reports.
    let pointer = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if pointer.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: allocated with `T`'s layout by the global allocator, and zeroed, which
    // the caller promises is a valid `T`.
    unsafe { Box::from_raw(pointer) }
}

/// Buffers and message headers for one `recvmmsg`. The kernel structures point into
/// the same heap block, which never moves.
struct Incoming {
    buffers: [[u8; RECEIVE_BUFFER]; BATCH],
    sources: [libc::sockaddr_storage; BATCH],
    iov: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
}

impl Incoming {
    fn new() -> Box<Incoming> {
        // SAFETY: every field is plain data (byte arrays, C structs of integers and
        // pointers) for which all-zero bytes are a valid value.
        let mut incoming: Box<Incoming> = unsafe { boxed_zeroed() };
        for index in 0..BATCH {
            incoming.iov[index] = libc::iovec {
                iov_base: incoming.buffers[index].as_mut_ptr().cast(),
                iov_len: RECEIVE_BUFFER,
            };
        }
        incoming
    }

    /// Waits for at least one datagram (up to [`STOP_CHECK_INTERVAL`]) and takes what
    /// has arrived, up to a batch.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        for index in 0..BATCH {
            let header = &mut self.headers[index].msg_hdr;
            header.msg_name = (&mut self.sources[index] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut self.iov[index];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
            self.headers[index].msg_len = 0;
        }
        // SAFETY: the headers point at live buffers of the lengths given, owned by
        // `self` and not otherwise borrowed during the call.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(received as usize)
    }

    /// The `index`th datagram received and who sent it; `None` for one cut short.
    fn query(&self, index: usize) -> Option<(&[u8], Source)> {
        let header = &self.headers[index];
        if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (header.msg_len as usize).min(RECEIVE_BUFFER);
        let source = Source {
            storage: self.sources[index],
            len: header.msg_hdr.msg_namelen,
        };
        Some((&self.buffers[index][..len], source))
    }
}

/// A datagram's sender, as the kernel gave it.
#[derive(Clone, Copy)]
struct Source {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Source {
    fn address(&self) -> Option<SocketAddr> {
        let storage: *const libc::sockaddr_storage = &self.storage;
        match i32::from(self.storage.ss_family) {
            libc::AF_INET if self.len as usize >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel wrote a `sockaddr_in` (family AF_INET, length
                // checked) into storage that is large and aligned enough for any.
                let v4 = unsafe { &*storage.cast::<libc::sockaddr_in>() };
                let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
            }
            libc::AF_INET6 if self.len as usize >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for AF_INET6 and `sockaddr_in6`.
                let v6 = unsafe { &*storage.cast::<libc::sockaddr_in6>() };
                let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// Buffers and message headers for one `sendmmsg`, as [`Incoming`].
struct Outgoing {
    buffers: [[u8; MAX_UDP_RESPONSE]; BATCH],
    destinations: [libc::sockaddr_storage; BATCH],
    iov: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
    queued: usize,
}

impl Outgoing {
    fn new() -> Box<Outgoing> {
        // SAFETY: as for `Incoming::new`.
        unsafe { boxed_zeroed() }
    }

    /// Queues `response` to `destination`.
    fn queue(&mut self, destination: Source, response: &[u8]) {
        let slot = self.queued;
        let len = response.len().min(MAX_UDP_RESPONSE);
        self.buffers[slot][..len].copy_from_slice(&response[..len]);
        self.destinations[slot] = destination.storage;
        self.iov[slot] = libc::iovec {
            iov_base: self.buffers[slot].as_mut_ptr().cast(),
            iov_len: len,
        };
        let header = &mut self.headers[slot].msg_hdr;
        header.msg_name = (&mut self.destinations[slot] as *mut libc::sockaddr_storage).cast();
        header.msg_namelen = destination.len;
        header.msg_iov = &mut self.iov[slot];
        header.msg_iovlen = 1;
        header.msg_control = std::ptr::null_mut();
        header.msg_controllen = 0;
        header.msg_flags = 0;
        self.queued += 1;
    }

    /// Sends every queued reply and empties the queue.
    fn send(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let queued = std::mem::take(&mut self.queued);
        let mut sent = 0;
        let mut last_error = None;
        while sent < queued {
            // SAFETY: headers `sent..queued` were filled by `queue` and point at
            // buffers owned by `self`.
            let result = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.headers[sent..].as_mut_ptr(),
                    (queued - sent) as libc::c_uint,
                    0,
                )
            };
            if result < 0 {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    // Skip the datagram that failed and go on with the rest.
                    sent += 1;
                    last_error = Some(error);
                }
                continue;
            }
            sent += result as usize;
        }
        last_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_slots_are_bounded_and_given_back_when_dropped() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut slots: Vec<FallbackSlot> = (0..MAX_FALLBACKS_IN_FLIGHT)
            .map(|_| FallbackSlot::take(&in_flight).expect("a free slot"))
            .collect();
        assert!(FallbackSlot::take(&in_flight).is_none());
        assert_eq!(in_flight.load(Ordering::Relaxed), MAX_FALLBACKS_IN_FLIGHT);
        slots.pop();
        assert!(FallbackSlot::take(&in_flight).is_some());
        drop(slots);
        assert_eq!(in_flight.load(Ordering::Relaxed), 0);
    }
}
