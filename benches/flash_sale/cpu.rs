//! Where the CPU goes, read from `/proc` (Linux): this process (Kitara or the baseline,
//! and the load generator), the local database server, and the idle cores; and what the
//! machine is.

use std::time::Instant;

/// CPU seconds used so far, read from /proc (Linux; `None` elsewhere).
#[derive(Clone, Copy)]
pub(crate) struct CpuClock {
    pub(crate) at: Instant,
    /// This process: Kitara or the baseline, and the load generator.
    pub(crate) process: f64,
    /// The server runtime's threads alone: Kitara (or the baseline), without the load
    /// generator and what runs on its runtime (the followers of `hot-followed`). Every
    /// server of a group runs on that runtime, so a workload's figure includes the
    /// others' background tasks (few while they wait for their slice); the runtime's
    /// blocking threads bear the same name, and one that exits takes its time with it.
    pub(crate) server: f64,
    /// The database server, when it runs on this machine.
    pub(crate) database: Option<f64>,
    /// Idle and I/O-wait time of all cores together.
    pub(crate) idle: f64,
}

/// CPU used between two readings, in seconds; `per` turns it into microseconds per
/// answer.
#[derive(Clone, Copy)]
pub(crate) struct CpuUse {
    pub(crate) process: f64,
    pub(crate) server: f64,
    pub(crate) database: Option<f64>,
    /// Idle core-seconds, and the core-seconds the machine had in all.
    pub(crate) idle: f64,
    pub(crate) capacity: f64,
}

/// CPU per counted answer, as the table shows it.
#[derive(Clone, Copy)]
pub(crate) struct PerAnswer {
    pub(crate) process: f64,
    /// The server runtime's threads alone.
    pub(crate) server: f64,
    pub(crate) database: Option<f64>,
    /// Fraction of the machine's cores that sat idle.
    pub(crate) idle: f64,
}

/// Linux reports process and system times in USER_HZ ticks, 100 per second.
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

impl CpuClock {
    pub(crate) fn now() -> Option<CpuClock> {
        Some(CpuClock {
            at: Instant::now(),
            process: process_cpu_seconds("self")?,
            server: threads_cpu_seconds(crate::SERVER_THREADS),
            database: database_pid().and_then(|pid| process_cpu_seconds(&pid.to_string())),
            idle: idle_seconds()?,
        })
    }

    pub(crate) fn used(self) -> Option<CpuUse> {
        let now = CpuClock::now()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Some(CpuUse {
            process: now.process - self.process,
            server: now.server - self.server,
            database: now.database.zip(self.database).map(|(b, a)| b - a),
            idle: now.idle - self.idle,
            capacity: (now.at - self.at).as_secs_f64() * cores,
        })
    }
}

impl CpuUse {
    pub(crate) fn add(self, other: CpuUse) -> CpuUse {
        CpuUse {
            process: self.process + other.process,
            server: self.server + other.server,
            database: self.database.zip(other.database).map(|(a, b)| a + b),
            idle: self.idle + other.idle,
            capacity: self.capacity + other.capacity,
        }
    }

    pub(crate) fn per(self, answers: u64) -> PerAnswer {
        let per = |seconds: f64| seconds * 1e6 / answers.max(1) as f64;
        PerAnswer {
            process: per(self.process),
            server: per(self.server),
            database: self.database.map(per),
            idle: (self.idle / self.capacity).clamp(0.0, 1.0),
        }
    }
}

/// utime + stime of `/proc/<pid>/stat`, in seconds.
pub(crate) fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// utime + stime of this process's threads named `name`, in seconds.
fn threads_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .filter_map(|task| {
            let tid = task.file_name().into_string().ok()?;
            process_cpu_seconds(&format!("self/task/{tid}"))
        })
        .sum()
}

/// Idle + iowait of all cores, from the first line of `/proc/stat`.
pub(crate) fn idle_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    Some((fields.get(3)? + fields.get(4)?) / TICKS_PER_SECOND)
}

/// The database server process whose CPU is reported; set once at the start.
pub(crate) static DATABASE_PID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();

pub(crate) fn database_pid() -> Option<u32> {
    DATABASE_PID.get().copied().flatten()
}

/// A MariaDB/MySQL server process on this machine (the benchmark cannot tell whether it
/// is the one `KITARA_BENCH_MYSQL_URL` names; it says which one it found).
pub(crate) fn find_database_process() -> Option<(u32, String)> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let comm = comm.trim();
            matches!(comm, "mariadbd" | "mysqld").then(|| (pid, comm.to_owned()))
        })
}

pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(String::new, |kb| {
            format!(", {:.0} GiB", kb / 1024.0 / 1024.0)
        });
    format!("{cpus} cores ({model}){memory}")
}

pub(crate) fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// RSS after the allocator gave back what it holds free, so that the figure is what is
/// live: what loading left behind (rows read and dropped) is not counted.
pub(crate) fn live_rss_mib() -> Option<f64> {
    // SAFETY: `mi_collect` only walks the allocator's own free lists; it is safe to call
    // from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
    rss_mib()
}
