//! `servant __spawner`: one long-lived process per agent that forks the job shims of owned
//! tasks, so that a task no longer costs an `exec` of the whole servant binary (its dynamic
//! loading, its page faults and its start-up: about a third of all the CPU a trivial job cost),
//! and keeps the shims it forked for the next tasks, so that a task does not cost a `fork` and
//! an exit either (their page faults and page-table copies were a fifth of the machine's CPU
//! under a stream of trivial jobs).
//!
//! The protocol, all on Unix sockets:
//! - The agent starts the spawner once (`forked::Spawner`) with a `SOCK_SEQPACKET` control
//!   socket as its stdin. It exits when that socket ends: the agent is gone.
//! - Per task, the agent makes a stream socket pair and sends one end (the task's lease) with
//!   the task's stdout and stderr files over the control socket (`SCM_RIGHTS`); the one byte
//!   of the message says which of the two files came (absent: `/dev/null`).
//! - The spawner hands the message on, unchanged, to an idle shim over that shim's own
//!   `SOCK_SEQPACKET` channel, or forks a new shim when none is idle. A shim
//!   (`shim::run_task`) puts the files in place as its stdout and stderr, reads the task's
//!   arguments from the lease's first line, starts the command in a process group of its own
//!   and writes `pid N` (the group) on the lease; then it watches the command, the lease and
//!   the fence lines, writes `exit N` (the code, or 128 + the signal) once the command ended,
//!   and tells the spawner it is idle with one byte on its channel. A shim that killed its
//!   command (the lease ended, its deadline passed) ends instead.
//! - The spawner ends a shim idle for `IDLE_LIMIT` by closing its channel. A shim whose channel
//!   ended (the spawner is gone) ends once its task has.
//!
//! A killed spawner costs nothing but itself: each shim holds its own task's lease and reports
//! on it. The spawner is single-threaded, which is what makes its `fork` sound: the child may
//! allocate, start threads and spawn the command, as a freshly executed process can.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    recv, recvmsg, send, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned,
    MsgFlags, SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2, fork, ForkResult, Pid};

/// The message byte's flags: which of stdout and stderr follow the lease.
pub(super) const HAS_STDOUT: u8 = 1;
pub(super) const HAS_STDERR: u8 = 2;

/// The control socket: the spawner's stdin.
const CONTROL: RawFd = 0;

/// How long a shim may wait idle for another task before the spawner ends it.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// What the control socket (or a shim's channel) said.
enum Message {
    /// A task to run.
    Fork(Request),
    /// A message without the descriptors its byte names: they are closed, so the agent sees
    /// the lease end.
    Malformed,
    /// The agent is gone.
    End,
}

/// One task's descriptors.
pub(super) struct Request {
    lease: OwnedFd,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// A shim the spawner forked: its channel, and since when it waits for a task.
struct Shim {
    chan: OwnedFd,
    idle_since: Option<Instant>,
}

/// Runs the spawner until its control socket ends; the exit code.
pub fn run() -> i32 {
    let mut children = SigSet::empty();
    children.add(Signal::SIGCHLD);
    // SIGCHLD is read from a signalfd, so it must not be delivered; the shims read theirs the
    // same way.
    if let Err(e) = children.thread_block() {
        eprintln!("servant spawner: cannot block signals: {e}");
        return 1;
    }
    // The spawner ends when its agent does, and must outlive a SIGTERM sent to the agent's
    // whole cgroup: its shims report the ends of the tasks the agent then stops.
    if let Err(e) = outlive_stop_signals() {
        eprintln!("servant spawner: cannot catch the stop signals: {e}");
        return 1;
    }
    let sfd = match SignalFd::with_flags(&children, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("servant spawner: cannot read SIGCHLD: {e}");
            return 1;
        }
    };
    // A process a job leaves behind outside its group (a daemon, a `setsid` child) is adopted
    // here when its parent ends, not by PID 1, and reaped below like a shim: a container's or
    // a sandbox's PID 1 may reap nothing, and it would stay a zombie.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("servant spawner: cannot adopt orphaned processes: {e}");
    }
    let mut shims: HashMap<i32, Shim> = HashMap::new();
    let stdin = std::io::stdin();
    loop {
        let now = Instant::now();
        // An idle shim past the limit ends when its channel does.
        shims.retain(|_, s| s.idle_since.is_none_or(|t| now - t < IDLE_LIMIT));
        let wait = shims
            .values()
            .filter_map(|s| s.idle_since)
            .min()
            .map(|t| IDLE_LIMIT.saturating_sub(now - t) + Duration::from_millis(1));
        let pids: Vec<i32> = shims.keys().copied().collect();
        let ready: Vec<bool> = {
            let mut fds = vec![
                PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(
                pids.iter()
                    .filter_map(|p| shims.get(p))
                    .map(|s| PollFd::new(s.chan.as_fd(), PollFlags::POLLIN)),
            );
            let timeout = wait.map_or(PollTimeout::NONE, |d| {
                PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX)
            });
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("servant spawner: poll: {e}");
                    return 1;
                }
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        if ready[1] {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap();
        }
        for (pid, _) in pids.iter().zip(&ready[2..]).filter(|(_, r)| **r) {
            let mut byte = [0u8; 1];
            match shims
                .get(pid)
                .map(|s| recv(s.chan.as_raw_fd(), &mut byte, MsgFlags::empty()))
            {
                Some(Ok(1..)) => {
                    if let Some(s) = shims.get_mut(pid) {
                        s.idle_since = Some(Instant::now());
                    }
                }
                Some(Err(Errno::EAGAIN | Errno::EINTR)) => {}
                // The shim ended (it killed its task, or died).
                _ => {
                    shims.remove(pid);
                }
            }
        }
        if !ready[0] {
            continue;
        }
        match receive(CONTROL) {
            Ok(Message::Fork(req)) => {
                let Some(req) = hand_to_idle(&mut shims, req) else {
                    continue;
                };
                let (mine, theirs) = match socketpair(
                    AddressFamily::Unix,
                    SockType::SeqPacket,
                    None,
                    SockFlag::SOCK_CLOEXEC,
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        tell(&req.lease, &format!("error cannot fork: {e}\n"));
                        continue;
                    }
                };
                match unsafe_fork() {
                    Ok(ForkResult::Child) => {
                        // Only the task's own descriptors and its channel stay open in the
                        // shim: not the control socket (stdin), not the other shims' channels.
                        drop((sfd, shims, mine));
                        std::process::exit(child(req, theirs));
                    }
                    Ok(ForkResult::Parent { child }) => {
                        let chan = mine;
                        shims.insert(
                            child.as_raw(),
                            Shim {
                                chan,
                                idle_since: None,
                            },
                        );
                    }
                    Err(e) => tell(&req.lease, &format!("error cannot fork: {e}\n")),
                }
            }
            Ok(Message::Malformed) => {}
            // The agent is gone; the shims see their leases end and stop their tasks, and
            // their channels end with this process.
            Ok(Message::End) => return 0,
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => {
                eprintln!("servant spawner: cannot read the control socket: {e}");
                return 1;
            }
        }
    }
}

/// Gives the task to an idle shim; the request back when none could take it. A shim whose
/// channel fails is gone: it is forgotten.
fn hand_to_idle(shims: &mut HashMap<i32, Shim>, req: Request) -> Option<Request> {
    let idle: Vec<i32> = shims
        .iter()
        .filter(|(_, s)| s.idle_since.is_some())
        .map(|(p, _)| *p)
        .collect();
    for pid in idle {
        let sent = shims.get(&pid).map(|s| forward(&s.chan, &req));
        match sent {
            Some(Ok(())) => {
                if let Some(s) = shims.get_mut(&pid) {
                    s.idle_since = None;
                }
                return None;
            }
            _ => {
                shims.remove(&pid);
            }
        }
    }
    Some(req)
}

/// Sends a task's descriptors down a shim's channel, as the agent sent them.
fn forward(chan: &OwnedFd, req: &Request) -> nix::Result<()> {
    let mut flags = 0u8;
    let mut fds = vec![req.lease.as_raw_fd()];
    if let Some(f) = &req.stdout {
        flags |= HAS_STDOUT;
        fds.push(f.as_raw_fd());
    }
    if let Some(f) = &req.stderr {
        flags |= HAS_STDERR;
        fds.push(f.as_raw_fd());
    }
    let byte = [flags];
    sendmsg::<()>(
        chan.as_raw_fd(),
        &[IoSlice::new(&byte)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map(|_| ())
}

/// `fork`, sound here because the spawner has one thread: the child may do anything a new
/// process can.
#[allow(unsafe_code)]
fn unsafe_fork() -> nix::Result<ForkResult> {
    // SAFETY: the spawner process runs no other thread (no runtime, no helper threads), so no
    // lock or allocator state can be held by a thread that does not exist in the child.
    unsafe { fork() }
}

/// Catches SIGTERM, SIGINT and SIGHUP with a handler that does nothing: the spawner and its
/// shims outlive them (a blocked signal would do that too, but the commands would inherit the
/// mask, and a signal pending in a shim would kill it once unblocked). A caught signal goes
/// back to its default in `exec`, so a command starts with the default disposition.
#[allow(unsafe_code)]
fn outlive_stop_signals() -> nix::Result<()> {
    extern "C" fn ignore(_: nix::libc::c_int) {}
    let action = nix::sys::signal::SigAction::new(
        SigHandler::Handler(ignore),
        nix::sys::signal::SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler does nothing, which is async-signal-safe.
        unsafe { nix::sys::signal::sigaction(s, &action) }?;
    }
    Ok(())
}

/// One message from the control socket, or from a shim's channel.
fn receive(fd: RawFd) -> nix::Result<Message> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let (bytes, raw) = {
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut raw = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                raw.extend(fds);
            }
        }
        (msg.bytes, raw)
    };
    let mut fds = raw.into_iter().map(own).collect::<Vec<_>>().into_iter();
    if bytes == 0 && fds.len() == 0 {
        return Ok(Message::End);
    }
    let want = 1 + usize::from(byte[0] & HAS_STDOUT != 0) + usize::from(byte[0] & HAS_STDERR != 0);
    if fds.len() != want {
        eprintln!(
            "servant spawner: a request with {} descriptors, not {want}",
            fds.len()
        );
        return Ok(Message::Malformed);
    }
    let Some(lease) = fds.next() else {
        return Ok(Message::Malformed);
    };
    let stdout = (byte[0] & HAS_STDOUT != 0).then(|| fds.next()).flatten();
    let stderr = (byte[0] & HAS_STDERR != 0).then(|| fds.next()).flatten();
    Ok(Message::Fork(Request {
        lease,
        stdout,
        stderr,
    }))
}

/// Takes ownership of a descriptor the kernel just installed for us.
#[allow(unsafe_code)]
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `recvmsg` installed it in this process for this message; nothing else has it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Writes a line to the agent's end of a lease; a gone agent cannot read it.
fn tell(lease: &OwnedFd, line: &str) {
    let _ = send(lease.as_raw_fd(), line.as_bytes(), MsgFlags::MSG_NOSIGNAL);
}

/// Reaps every ended child: shims and adopted orphans (a shim reports its task's end itself).
fn reap() {
    while let Ok(status) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            return;
        }
    }
}

/// In the forked child: becomes a shim and runs tasks until its channel ends or it killed one.
/// Returns its exit code.
fn child(first: Request, chan: OwnedFd) -> i32 {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return 127;
    };
    // The control socket leaves stdin: a copy held here would keep the agent's sends going
    // into a dead spawner's socket.
    if dup2(null.as_raw_fd(), 0).is_err() {
        return 127;
    }
    // What `ps -e` shows (the command line stays the spawner's).
    let _ = nix::sys::prctl::set_name(c"servant-shim");
    let mut children = SigSet::empty();
    children.add(Signal::SIGCHLD);
    let Ok(ended) = SignalFd::with_flags(&children, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    else {
        return 127;
    };
    let mut req = first;
    loop {
        // stdout and stderr are the task's files while it runs, for the command to inherit.
        for (file, to) in [(&req.stdout, 1), (&req.stderr, 2)] {
            let from = file.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd());
            if dup2(from, to).is_err() {
                tell(&req.lease, "error cannot set the task's output\n");
                return 127;
            }
        }
        // Fds 1 and 2 hold the copies the command inherits; the received ones would keep the
        // files open while the shim waits idle (a removed log's space, a capture's temp file).
        let Request {
            lease,
            stdout,
            stderr,
        } = req;
        drop((stdout, stderr));
        // Idle before the task's end is told: the agent's next task, which may follow at once,
        // finds this shim waiting rather than costing a fork.
        let idle = |again: bool| {
            // Between tasks the shim keeps no task's file open.
            for to in [1, 2] {
                let _ = dup2(null.as_raw_fd(), to);
            }
            again && send(chan.as_raw_fd(), &[1], MsgFlags::MSG_NOSIGNAL).is_ok()
        };
        if !super::shim::run_task(std::fs::File::from(lease), &ended, idle) {
            return 0;
        }
        // The next task, or the end of the channel (the spawner ended this shim, or is gone).
        req = loop {
            match receive(chan.as_raw_fd()) {
                Ok(Message::Fork(r)) => break r,
                // Its descriptors are closed, so the agent sees that task's lease end.
                Ok(Message::Malformed) => {
                    if send(chan.as_raw_fd(), &[1], MsgFlags::MSG_NOSIGNAL).is_err() {
                        return 0;
                    }
                }
                Err(Errno::EINTR) => {}
                Ok(Message::End) | Err(_) => return 0,
            }
        };
    }
}
