//! Admission, eviction at the cap, and the sweeper, on real sockets.

use std::time::Duration;

use super::*;

fn settings(max: usize, per_source: usize, reserve: usize) -> ConnectionSettings {
    ConnectionSettings {
        max,
        per_source,
        agent_reserve: reserve,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
    }
}

fn peer(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 40000)
}

/// `n` real connections on 127.0.0.1, each admitted: the clients' ends, and the served ends.
async fn admitted_pairs(
    c: &Arc<Connections>,
    n: usize,
) -> (
    Vec<tokio::net::TcpStream>,
    Vec<Guarded<tokio::net::TcpStream>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::new();
    let mut served = Vec::new();
    for _ in 0..n {
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (io, peer) = listener.accept().await.unwrap();
        served.push(c.admit(peer).unwrap().open(io));
    }
    (clients, served)
}

#[test]
fn a_source_over_its_cap_is_refused_and_others_are_not() {
    let c = Connections::new(settings(0, 2, 0), &Metrics::default());
    let a = c.admit(peer("10.0.0.1")).unwrap();
    let _b = c.admit(peer("10.0.0.1")).unwrap();
    assert_eq!(c.admit(peer("10.0.0.1")).err(), Some(Refused::PerSource));
    assert!(c.admit(peer("10.0.0.2")).is_ok());
    drop(a);
    assert!(
        c.admit(peer("10.0.0.1")).is_ok(),
        "a closed one frees its place"
    );
}

#[test]
fn ipv6_sources_count_by_their_64() {
    let c = Connections::new(settings(0, 1, 0), &Metrics::default());
    let _a = c.admit(peer("2001:db8:1:2::1")).unwrap();
    assert_eq!(
        c.admit(peer("2001:db8:1:2:ffff::9")).err(),
        Some(Refused::PerSource)
    );
    assert!(c.admit(peer("2001:db8:1:3::1")).is_ok());
}

#[test]
fn the_last_places_below_the_cap_are_for_agents_and_a_full_server_refuses() {
    let c = Connections::new(settings(4, 0, 2), &Metrics::default());
    let tickets: Vec<Ticket> = (0..4).map(|_| c.admit(peer("10.0.0.1")).unwrap()).collect();
    let restricted: Vec<bool> = tickets.iter().map(|t| t.restricted).collect();
    assert_eq!(restricted, [false, false, true, true]);
    // Nothing on a thread waits for a request: nothing can be closed for a newcomer.
    assert_eq!(c.admit(peer("10.0.0.9")).err(), Some(Refused::Full));
    assert_eq!(c.open(), 4);
}

#[tokio::test]
async fn at_the_cap_the_connection_waiting_longest_for_a_request_makes_room() {
    use tokio::io::AsyncReadExt;
    let c = Connections::new(settings(2, 0, 0), &Metrics::default());
    let (mut clients, served) = admitted_pairs(&c, 2).await;
    // The first is busy with a request; the second waits for its next one.
    served[0].slot().busy();
    served[1].slot().wait_idle();
    let newcomer = c.admit(peer("127.0.0.1")).expect("room is made");
    assert!(!newcomer.restricted);
    // The idle one's socket was shut down: its client sees the end.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), clients[1].read(&mut byte))
        .await
        .expect("the idle connection ends");
    assert!(matches!(read, Ok(0) | Err(_)));
    assert_eq!(c.open(), 2);
    drop(served);
    drop(newcomer);
    assert_eq!(c.open(), 0);
}

/// A new connection's head is due soon (the header timeout) while a kept-alive one may idle for
/// long: by deadline alone the new one would go first, though it may have sent its request
/// already. The idle one, which asked nothing, makes room instead.
#[tokio::test]
async fn at_the_cap_an_idle_connection_makes_room_before_a_new_one_whose_head_is_due() {
    use tokio::io::AsyncReadExt;
    let c = Connections::new(settings(2, 0, 0), &Metrics::default());
    let (mut clients, served) = admitted_pairs(&c, 2).await;
    served[0].slot().wait_idle();
    served[1].slot().wait_head();
    let newcomer = c.admit(peer("127.0.0.1")).expect("room is made");
    assert!(!newcomer.restricted);
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), clients[0].read(&mut byte))
        .await
        .expect("the idle connection ends");
    assert!(matches!(read, Ok(0) | Err(_)));
    let still = tokio::time::timeout(Duration::from_millis(200), clients[1].read(&mut byte)).await;
    assert!(still.is_err(), "the new connection is kept: {still:?}");
    drop(served);
    drop(newcomer);
}

#[tokio::test]
async fn the_sweeper_closes_a_connection_past_its_deadline_and_not_a_busy_one() {
    use tokio::io::AsyncReadExt;
    let mut s = settings(0, 0, 0);
    s.header_timeout = Duration::from_millis(1);
    let c = Connections::new(s, &Metrics::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (io, peer) = listener.accept().await.unwrap();
    let slow_served = c.admit(peer).unwrap().open(io);
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (io, peer) = listener.accept().await.unwrap();
    let busy_served = c.admit(peer).unwrap().open(io);
    busy_served.slot().busy();
    std::thread::sleep(Duration::from_millis(5));
    c.sweep();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut byte))
        .await
        .expect("the slow connection ends");
    assert!(matches!(read, Ok(0) | Err(_)));
    let still = tokio::time::timeout(Duration::from_millis(200), busy.read(&mut byte)).await;
    assert!(still.is_err(), "the busy connection is left alone");
    drop((slow_served, busy_served));
}
