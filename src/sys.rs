//! Raw system calls: entering a mount namespace and signalling a process (the rebooters), a
//! socket option the standard library does not set and the clock tick (the metrics), and
//! access-pattern hints for this program's own file (start-up).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Makes the child of `command` join the mount namespace open at `namespace` and change its working
/// directory to that namespace's `/`, after the fork and before the exec, so the program is looked up
/// in the namespace it runs in (what `nsenter -m` does). The descriptor moves into `command` and is
/// closed with it; it is close-on-exec, so the program never inherits it.
pub(crate) fn enter_mount_namespace_on_exec(command: &mut tokio::process::Command, namespace: OwnedFd) {
    let hook = move || {
        // SAFETY: `namespace` is an open descriptor owned by this closure, so it is valid for the call;
        // setns(2) takes no pointers.
        if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNS) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the argument is a NUL-terminated string literal with static lifetime.
        if unsafe { libc::chdir(c"/".as_ptr()) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child, where only async-signal-safe operations are allowed.
    // It makes two system calls (setns, chdir) and, on failure, builds an `io::Error` from errno, which
    // neither allocates nor takes a lock. It touches no memory shared with other threads.
    unsafe { command.pre_exec(hook) };
}

/// Sends `signal` to the single process `pid`. A pid of 0 or one beyond `pid_t` is refused: `kill(2)`
/// would read it as a process group or as "every process".
pub(crate) fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let target = single_process(pid)?;
    // SAFETY: kill(2) takes no pointers; `target` is a positive pid, so exactly one process is addressed.
    if unsafe { libc::kill(target, signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to every process in the process group `pgid`. Groups 0 and 1, and the group of this
/// process, are refused: `kill(2)` would read 0 as our own group and -1 as "every process".
pub(crate) fn signal_process_group(pgid: u32, signal: i32) -> io::Result<()> {
    let group = single_process(pgid)?;
    if group == 1 || group == own_process_group() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    // SAFETY: kill(2) takes no pointers; `-group` is below -1, so exactly one process group is
    // addressed.
    if unsafe { libc::kill(-group, signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every mapping of this program's own file (its code and read-only data) for random access
/// (`madvise(MADV_RANDOM)`): a page fault then reads in the page it needs, not the readahead
/// window around it, so the large parts of the binary a running agent never executes stay on
/// disk instead of in memory. A hint only: nothing changes in what the mappings hold. Returns the
/// bytes marked.
pub fn random_access_to_own_binary() -> io::Result<usize> {
    advise_own_binary(libc::MADV_RANDOM, false)
}

/// Hands the pages of this program's code and read-only data back to the kernel
/// (`madvise(MADV_PAGEOUT)` on the read-only mappings of its own file): they leave this process
/// and, unless another process maps them too, memory. What runs afterwards faults its pages in
/// again from the file, so after start-up only the code still in use stays resident. Returns
/// the bytes advised.
pub fn release_own_binary_pages() -> io::Result<usize> {
    advise_own_binary(libc::MADV_PAGEOUT, true)
}

fn advise_own_binary(advice: libc::c_int, read_only: bool) -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for line in maps.lines() {
        // start-end perms offset dev inode path
        let mut fields = line.splitn(6, ' ');
        let range = fields.next().unwrap_or_default();
        let perms = fields.next().unwrap_or_default();
        let path = fields.nth(3).unwrap_or_default().trim_start();
        if std::path::Path::new(path) != exe || (read_only && perms.contains('w')) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        // SAFETY: [start, end) is a mapping of this process as the kernel listed it, and this
        // program's own file stays mapped for its lifetime. MADV_RANDOM sets an access-pattern
        // hint; MADV_PAGEOUT, on a read-only mapping of a file, drops pages the file holds
        // unchanged, to be read in again on the next access. Neither changes what the range
        // holds or its protection.
        if unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) } == -1 {
            return Err(io::Error::last_os_error());
        }
        advised += end - start;
    }
    Ok(advised)
}

/// The kernel's clock ticks per second (`USER_HZ`), the unit of the times in `/proc/PID/stat`.
pub(crate) fn clock_ticks_per_second() -> io::Result<u64> {
    // SAFETY: sysconf(3) takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|&t| t > 0)
        .ok_or_else(io::Error::last_os_error)
}

fn own_process_group() -> libc::pid_t {
    // SAFETY: getpgrp(2) takes no arguments and cannot fail.
    unsafe { libc::getpgrp() }
}

fn single_process(pid: u32) -> io::Result<libc::pid_t> {
    match libc::pid_t::try_from(pid) {
        Ok(target) if target > 0 => Ok(target),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{pid} is not a process id"),
        )),
    }
}

/// Sets `IPV6_V6ONLY` on an IPv6 socket: off, it also accepts IPv4 connections as IPv4-mapped
/// addresses, whatever the host's `net.ipv6.bindv6only` default. Must be set before `bind`.
pub(crate) fn set_ipv6_only(socket: &impl AsRawFd, only: bool) -> io::Result<()> {
    let value = libc::c_int::from(only);
    // SAFETY: the descriptor is open for the borrow of `socket`; the option value points to a
    // c_int that lives across the call, and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Signal 0 only checks that the target exists, so these cases are harmless even if a guard failed.

    #[test]
    fn pid_zero_is_refused_rather_than_read_as_our_group() {
        let err = send_signal(0, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn pid_beyond_pid_t_is_refused_rather_than_read_as_negative() {
        let err = send_signal(u32::MAX, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn groups_that_would_address_everyone_or_ourselves_are_refused() {
        let ours = u32::try_from(own_process_group()).unwrap();
        for pgid in [0, 1, ours, u32::MAX] {
            let err = signal_process_group(pgid, 0).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "group {pgid}");
        }
    }

    #[test]
    fn our_own_process_can_be_addressed() {
        send_signal(std::process::id(), 0).unwrap();
    }

    #[test]
    fn the_own_binary_is_found_and_advised() {
        // The test binary maps at least its code from its own file, read-only.
        let marked = random_access_to_own_binary().unwrap();
        assert!(marked >= 4096, "marked {marked} bytes");
        let released = release_own_binary_pages().unwrap();
        assert!(
            released >= 4096 && released <= marked,
            "released {released} of {marked} bytes"
        );
        // The code still runs: its pages come back from the file.
        assert_eq!(single_process(7).unwrap(), 7);
    }

    #[test]
    fn a_missing_process_is_reported() {
        // Beyond the largest possible pid_max (2^22), so no process has it.
        let err = send_signal(999_999_999, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }
}
