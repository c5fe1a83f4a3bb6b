//! The harness itself: a child it starts (an Asterisk, a sipp, a baresip)
//! dies with the test process, but not with the thread that started it.

use std::time::Duration;

/// Waits until the kernel has reaped thread `tid` of this process: its
/// `/proc/self/task` entry goes only after the thread's exit is complete,
/// parent-death signals included.
async fn reaped(tid: libc::pid_t) {
    let path = format!("/proc/self/task/{tid}");
    tokio::time::timeout(Duration::from_secs(20), async {
        while std::path::Path::new(&path).exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the thread is reaped within 20 s");
}

/// Starts `cat` (which lives until its stdin closes) on a thread of its own
/// that ends right after, through `start`; returns the child and that
/// thread's id.
fn cat_from_a_thread_that_ends(
    start: fn(tokio::process::Command) -> std::io::Result<tokio::process::Child>,
) -> (tokio::process::Child, libc::pid_t) {
    let runtime = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        let _in = runtime.enter();
        let mut c = tokio::process::Command::new("cat");
        c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).kill_on_drop(true);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        (start(c).expect("spawn cat"), tid)
    })
    .join()
    .expect("the starting thread")
}

/// `PR_SET_PDEATHSIG` follows the thread that forked: the way the harness
/// used to start its children, a child forked from a thread that then ends
/// is killed (this is what killed sipp under the daemon's `block_in_place`,
/// which retires runtime workers). `spawn_for_process` forks from one thread
/// that lives as long as the process, so the child outlives the thread that
/// asked for it and still dies with the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_outlives_the_thread_that_started_it_but_not_the_process() {
    // The old way, as a control: the fork on the thread that ends.
    fn fork_here(mut c: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            c.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        c.spawn()
    }
    let (mut control, tid) = cat_from_a_thread_that_ends(fork_here);
    reaped(tid).await;
    let status = tokio::time::timeout(Duration::from_secs(20), control.wait())
        .await
        .expect("the control child ends with its thread")
        .expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the control child is killed with the thread that forked it");

    let (mut child, tid) = cat_from_a_thread_that_ends(asterisk_real::spawn_for_process);
    reaped(tid).await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "a child started through spawn_for_process is still running after the thread that asked for it ended"
    );
    // It still answers: closing its stdin makes cat exit 0.
    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("cat ends").expect("wait");
    assert_eq!(status.code(), Some(0), "cat was alive and ended on its own");
}
