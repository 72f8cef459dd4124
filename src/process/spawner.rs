//! `servant __spawner`: one long-lived process per agent that forks a job shim for each owned
//! task, so that a task no longer costs an `exec` of the whole servant binary (its dynamic
//! loading, its page faults and its start-up: about a third of all the CPU a trivial job cost).
//!
//! The protocol, all on Unix sockets the agent makes:
//! - The agent starts the spawner once (`forked::Spawner`) with a `SOCK_SEQPACKET` control
//!   socket as its stdin. It exits when that socket ends: the agent is gone.
//! - Per task, the agent makes a stream socket pair and sends one end (the task's lease) with
//!   the task's stdout and stderr files over the control socket (`SCM_RIGHTS`); the one byte
//!   of the message says which of the two files came (absent: `/dev/null`).
//! - The spawner forks. The child is the shim (`shim::run_forked`): a process group of its own,
//!   the lease as its stdin, the files as its stdout and stderr. It reads its arguments from the
//!   lease's first line, then fence lines, as an executed shim does.
//! - The spawner keeps its own copy of the lease: it writes `pid N` when it forked and, once it
//!   reaped the shim, `exit N` (the code, or 128 + the signal). The agent reads both from its
//!   end. The shim itself writes `code N` as it ends, which the agent uses only should the
//!   spawner die first (no `exit` line will come; a shim killed by a signal: -1).
//!
//! The spawner is single-threaded, which is what makes the `fork` sound: the child may
//! allocate, start threads and spawn the command, as a freshly executed process can.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recvmsg, send, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2, fork, setpgid, ForkResult, Pid};

/// The message byte's flags: which of stdout and stderr follow the lease.
pub(super) const HAS_STDOUT: u8 = 1;
pub(super) const HAS_STDERR: u8 = 2;

/// The control socket: the spawner's stdin.
const CONTROL: RawFd = 0;

/// What the control socket said.
enum Message {
    /// Fork a shim for this task.
    Fork(Request),
    /// A message without the descriptors its byte names: they are closed, so the agent sees
    /// the lease end.
    Malformed,
    /// The agent is gone.
    End,
}

/// One task to fork for.
struct Request {
    lease: OwnedFd,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// Runs the spawner until its control socket ends; the exit code.
pub fn run() -> i32 {
    let mut children = SigSet::empty();
    children.add(Signal::SIGCHLD);
    // SIGCHLD is read from a signalfd, so it must not be delivered. The signals that stop a
    // service are held too: the spawner ends when its agent does, and must outlive a SIGTERM
    // sent to the agent's whole cgroup to report the ends of the tasks the agent then stops.
    // Forked shims unblock them all.
    let mut mask = children;
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    if let Err(e) = mask.thread_block() {
        eprintln!("servant spawner: cannot block signals: {e}");
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
    // The lease copies of the shims alive, by pid.
    let mut shims: HashMap<i32, OwnedFd> = HashMap::new();
    let stdin = std::io::stdin();
    loop {
        let mut fds = [
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("servant spawner: poll: {e}");
                return 1;
            }
        }
        let control = fds[0].revents().unwrap_or(PollFlags::empty());
        let ended = fds[1].revents().unwrap_or(PollFlags::empty());
        if !ended.is_empty() {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap(&mut shims);
        }
        if control.is_empty() {
            continue;
        }
        match receive() {
            Ok(Message::Fork(req)) => match unsafe_fork() {
                Ok(ForkResult::Child) => {
                    // Only the task's own descriptors stay open in the shim.
                    drop(sfd);
                    drop(shims);
                    std::process::exit(child(req, &mask));
                }
                Ok(ForkResult::Parent { child }) => {
                    tell(&req.lease, &format!("pid {child}\n"));
                    shims.insert(child.as_raw(), req.lease);
                }
                Err(e) => tell(&req.lease, &format!("error cannot fork: {e}\n")),
            },
            Ok(Message::Malformed) => {}
            // The agent is gone; the shims see their leases end and stop their tasks.
            Ok(Message::End) => return 0,
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => {
                eprintln!("servant spawner: cannot read the control socket: {e}");
                return 1;
            }
        }
    }
}

/// `fork`, sound here because the spawner has one thread: the child may do anything a new
/// process can.
#[allow(unsafe_code)]
fn unsafe_fork() -> nix::Result<ForkResult> {
    // SAFETY: the spawner process runs no other thread (no runtime, no helper threads), so no
    // lock or allocator state can be held by a thread that does not exist in the child.
    unsafe { fork() }
}

/// One message from the control socket.
fn receive() -> nix::Result<Message> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let (bytes, raw) = {
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = recvmsg::<()>(
            CONTROL,
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
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

/// Reaps every ended child, shims and adopted orphans, and tells a shim's agent how it ended.
fn reap(shims: &mut HashMap<i32, OwnedFd>) {
    loop {
        let (pid, code) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        if let Some(lease) = shims.remove(&pid.as_raw()) {
            tell(&lease, &format!("exit {code}\n"));
        }
    }
}

/// In the forked child: becomes the task's shim. Returns its exit code.
fn child(req: Request, mask: &SigSet) -> i32 {
    if mask.thread_unblock().is_err() {
        return 127;
    }
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let null = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
    };
    let stdout = match req.stdout.map(Ok).unwrap_or_else(null) {
        Ok(f) => f,
        Err(_) => return 127,
    };
    let stderr = match req.stderr.map(Ok).unwrap_or_else(null) {
        Ok(f) => f,
        Err(_) => return 127,
    };
    // The lease replaces the control socket as stdin; dup2 leaves the copies inheritable.
    for (fd, to) in [(&req.lease, 0), (&stdout, 1), (&stderr, 2)] {
        if dup2(fd.as_raw_fd(), to).is_err() {
            return 127;
        }
    }
    drop((req.lease, stdout, stderr));
    // What `ps -e` shows (the command line stays the spawner's).
    let _ = nix::sys::prctl::set_name(c"servant-shim");
    super::shim::run_forked()
}
