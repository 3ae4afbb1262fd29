//! A test `main` for integration tests that need their own binary entry point (to double
//! as the pre-receive hook executable): async tests run concurrently on one runtime, with
//! the libtest command line test runners use.
//!
//! Shared by `drivers/git/tests/hook.rs` and `core/ssh/tests/git_over_ssh.rs` via `#[path]`.

use std::future::Future;
use std::pin::Pin;

pub type TestFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
pub type TestCase = (&'static str, fn() -> TestFuture);

/// Lists or runs `tests` as the command line says, then exits.
///
/// Understood: `--list [--format terse] [--ignored]` (how cargo nextest discovers tests),
/// `--exact NAME` (how it runs one) and a name filter. Flags that take a value must not have
/// it read as the filter.
pub fn main(args: impl IntoIterator<Item = String>, tests: Vec<TestCase>) -> ! {
    let (mut list, mut exact, mut ignored, mut filter) = (false, false, false, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--list" => list = true,
            "--exact" => exact = true,
            "--ignored" => ignored = true,
            "--format" | "--color" | "--test-threads" | "--skip" | "--logfile" | "-Z" => {
                args.next();
            }
            _ if arg.starts_with('-') => {}
            _ => filter = Some(arg),
        }
    }
    let tests: Vec<TestCase> = tests
        .into_iter()
        .filter(|(name, _)| match filter.as_deref() {
            None => true,
            Some(f) if exact => *name == f,
            Some(f) => name.contains(f),
        })
        .collect();
    if list {
        // None of these tests is ignored.
        for (name, _) in tests.iter().filter(|_| !ignored) {
            println!("{name}: test");
        }
        std::process::exit(0);
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let failed = runtime.block_on(run(tests));
    std::process::exit(i32::from(failed > 0));
}

/// Runs the tests concurrently, each in its own task: a panic fails that test only.
async fn run(tests: Vec<TestCase>) -> usize {
    println!("running {} tests", tests.len());
    let handles: Vec<_> = tests.into_iter().map(|(name, test)| (name, tokio::spawn(test()))).collect();
    let mut failed = 0;
    for (name, handle) in handles {
        match handle.await {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("test result: {failed} failed");
    failed
}
