//! The proxy and the agents, run in this process through their libraries' `run`, each on a
//! thread of its own with a logger that puts the component's name in front of its lines.
//! Its listeners are bound before it starts, so a port that is taken is reported at once.

use crate::output;
use anyhow::Context;
use std::ffi::OsString;
use std::io::Write;
use std::thread::JoinHandle;
use stickyroute_relay::process::lifecycle::{self, Control};
use stickyroute_relay::serve::listeners::Listeners;
use tokio::sync::mpsc::UnboundedSender;
use tracing_subscriber::fmt::MakeWriter;

/// Which library a component runs.
#[derive(Clone, Copy)]
pub enum Kind {
    Proxy,
    Agent,
}

/// A running component: its name, its controls and its thread.
pub struct Component {
    pub name: String,
    controls: UnboundedSender<Control>,
    thread: Option<JoinHandle<()>>,
}

impl Component {
    /// Reads `args` as the binary would read its command line, binds, and starts it.
    pub fn start(kind: Kind, name: &str, args: &[String]) -> anyhow::Result<Component> {
        let binary = match kind {
            Kind::Proxy => "stickyroute-proxy",
            Kind::Agent => "stickyroute-agent",
        };
        let argv: Vec<OsString> = std::iter::once(binary.into())
            .chain(args.iter().map(Into::into))
            .collect();
        let (controls, received) = lifecycle::controls();
        let serve: Box<dyn FnOnce() -> anyhow::Result<bool> + Send> = match kind {
            Kind::Proxy => {
                let settings = stickyroute_proxy::server::settings(&argv)
                    .with_context(|| format!("{name}: invalid configuration"))?;
                let listeners =
                    Listeners::bind(&settings.listen, settings.workers, settings.admin_listen)
                        .with_context(|| format!("{name}: is another demo running?"))?;
                Box::new(move || {
                    block_on(stickyroute_proxy::server::run(
                        settings, listeners, received,
                    ))
                })
            }
            Kind::Agent => {
                let settings = stickyroute_agent::config::Settings::read(&argv, None)
                    .with_context(|| format!("{name}: invalid configuration"))?;
                let listeners =
                    Listeners::bind(&[settings.listen], settings.workers, settings.admin_listen)
                        .with_context(|| format!("{name}: is another demo running?"))?;
                Box::new(move || {
                    block_on(stickyroute_agent::server::run(
                        settings, listeners, received,
                    ))
                })
            }
        };
        let logger = logger(name);
        let label = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                tracing::dispatcher::with_default(&logger, || {
                    if let Err(error) = serve() {
                        tracing::error!("{error:#}");
                    }
                });
                output::say(&format!("{label} stopped"));
            })?;
        Ok(Component {
            name: name.to_owned(),
            controls,
            thread: Some(thread),
        })
    }

    /// Whether it has stopped (its `run` returned, an error included).
    pub fn has_stopped(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Shuts it down without waiting for its drain and grace period, as Ctrl-C twice would.
    pub fn stop(&mut self) {
        let _ = self.controls.send(Control::Shutdown("the demo's end"));
        let _ = self.controls.send(Control::Shutdown("the demo's end"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The component's own runtime: one thread, so every task it spawns logs through the
/// logger of the thread it runs on (its worker threads inherit it, see `process::workers`).
fn block_on<F: std::future::Future<Output = anyhow::Result<bool>>>(run: F) -> anyhow::Result<bool> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run)
}

/// Text lines at `info`, each with `name` in front, on the demo's stderr.
fn logger(name: &str) -> tracing::Dispatch {
    let filter = tracing_subscriber::EnvFilter::new("info,kube_client=off,kube_runtime=off");
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Prefixed(name.to_owned()))
        .finish();
    tracing::Dispatch::new(subscriber)
}

/// Makes writers that pass each formatted event to [`output::line`] under the name.
struct Prefixed(String);

struct Line<'a> {
    name: &'a str,
    buffer: Vec<u8>,
}

impl<'a> MakeWriter<'a> for Prefixed {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            name: &self.0,
            buffer: Vec::new(),
        }
    }
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One event is one writer: its lines go out when it is done.
impl Drop for Line<'_> {
    fn drop(&mut self) {
        let text = self.buffer.strip_suffix(b"\n").unwrap_or(&self.buffer);
        for line in text.split(|b| *b == b'\n') {
            output::line(self.name, line);
        }
    }
}
