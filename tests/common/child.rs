//! Child processes of the tests (nodes, nats-servers).

use std::process::Command;

/// Makes the child get SIGKILL when the thread that started it ends, so a
/// test process that dies (a crash, a signal, an abort) leaves no node or
/// nats-server behind still printing into the test's output or holding its
/// pipes open. Tests start children from their own thread and kill them
/// before it ends, so the signal only comes when that did not happen.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl,
    // which is async-signal-safe; it allocates nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
