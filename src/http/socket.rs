//! Socket and process settings a server of many connections wants.

/// Turns off Nagle's algorithm on an accepted connection (as nginx's `tcp_nodelay` does):
/// streamed tokens and small answers leave as soon as they are written.
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}

/// Raises this process's soft limit on open files to its hard limit (as Go's runtime and
/// nginx's `worker_rlimit_nofile` do), and warns when the connection cap cannot fit under it.
pub fn raise_open_files_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if got != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    // Each client connection is one descriptor and may hold a model-server connection; the
    // database, files and agents' processes need some more.
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    if max_connections > 0 && limit.rlim_cur < needed {
        tracing::warn!(
            open_files_limit = limit.rlim_cur,
            max_connections,
            "the open-files limit is low for --max-connections: raise `ulimit -n` (LimitNOFILE= under systemd) to about twice the connection cap, or lower the cap"
        );
    }
}
