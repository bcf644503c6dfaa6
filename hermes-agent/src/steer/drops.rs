//! What the steering program reports through aya-log: the connections it dropped because no
//! agent listened (failing closed). Its records become the agent's own log events (target
//! `hermes_steer`), both those of the program this agent loaded and, once at start, those an
//! earlier agent's program wrote while no agent ran.
use std::path::Path;

use aya::programs::ProgramInfo;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

/// Passes the program's records on to `tracing`.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "hermes_steer", "{message}"),
            log::Level::Warn => tracing::warn!(target: "hermes_steer", "{message}"),
            log::Level::Info => tracing::info!(target: "hermes_steer", "{message}"),
            log::Level::Debug => tracing::debug!(target: "hermes_steer", "{message}"),
            log::Level::Trace => tracing::trace!(target: "hermes_steer", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Reports, once, what the program pinned at `pin` (an earlier agent's) logged while no agent
/// read it: the connections it dropped while no agent ran.
pub fn report_earlier(pin: &Path) {
    if !pin.exists() {
        return;
    }
    let earlier = ProgramInfo::from_pin(pin)
        .map_err(|e| e.to_string())
        .and_then(|info| {
            EbpfLogger::init_from_id_with_logger(info.id(), ToTracing).map_err(|e| e.to_string())
        });
    match earlier {
        Ok(mut logger) => logger.flush(),
        // A program of an older agent, without the log map; or, without CAP_SYS_ADMIN (the
        // host-network DaemonSet's capabilities), the map cannot be opened by its id.
        Err(error) => tracing::info!(
            %error,
            "the connections the earlier steering program dropped while no agent ran cannot be \
             reported (an older agent's program, or no CAP_SYS_ADMIN to open its records)"
        ),
    }
}

/// Reads the records of the program this agent loaded as they come, for as long as the
/// runtime runs.
pub fn follow(logger: EbpfLogger<ToTracing>) {
    // SAFETY: the descriptor is the logger's ring buffer map, which the logger owns and the
    // `AsyncFd` owns the logger: it stays open, the same, until the registration is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let logger = match registered {
        Ok(logger) => logger,
        Err(error) => {
            tracing::warn!(%error, "cannot follow the steering program's records");
            return;
        }
    };
    tokio::spawn(async move {
        let mut logger = logger;
        loop {
            let Ok(mut ready) = logger.readable_mut().await else {
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
}
