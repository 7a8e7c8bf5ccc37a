//! A private MariaDB server for the tests that pause or kill the database: its own
//! datadir, port and socket in a temporary directory, stopped by its pid. The machine's
//! own server is never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{Backend, TestDb};

/// A `mariadbd` of the test's own, with a `kitara` account (password `kitara`). It is
/// killed when dropped.
pub struct PrivateMariadb {
    pub port: u16,
    dir: tempfile::TempDir,
    server: Child,
}

impl PrivateMariadb {
    /// Whether this machine can run one (`mariadbd` and `mariadb-install-db`). Under
    /// `CI=true` a machine that cannot fails the test instead.
    pub fn available() -> bool {
        let found = ["mariadbd", "mariadb-install-db"]
            .iter()
            .all(|tool| program(tool).is_some());
        crate::helpers::runnable(
            found,
            "CI=true but mariadbd is not installed (apt-get install mariadb-server)",
            "skipping a test: mariadbd is not installed",
        )
    }

    /// Creates a datadir, starts the server and waits until it answers.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kitara-mariadb-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path();
        // The server drops to the `mysql` user when started as root: it must reach its
        // files.
        make_traversable(path);
        let datadir = path.join("data");
        // A temporary directory of its own: bootstraps that share /tmp at the same
        // moment remove each other's temporary tables and fail ("Installation of system
        // tables failed!", 1051 Unknown table 'mysql.tmp_user_sys').
        let tmpdir = path.join("tmp");
        std::fs::create_dir(&tmpdir).expect("a temp dir for the server");
        chown_to_mysql(&tmpdir);
        run(Command::new(program("mariadb-install-db").unwrap())
            .env("TMPDIR", &tmpdir)
            .arg("--user=mysql")
            .arg(format!("--datadir={}", datadir.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db"));
        let port = free_port();
        let config = path.join("my.cnf");
        std::fs::write(
            &config,
            format!(
                "[mariadbd]\ndatadir={data}\nport={port}\nsocket={dir}/mysqld.sock\n\
                 pid-file={dir}/mysqld.pid\ntmpdir={tmp}\nbind-address=127.0.0.1\nuser=mysql\n\
                 skip-log-bin\ninnodb_buffer_pool_size=64M\ninnodb_log_file_size=32M\n\
                 innodb_flush_log_at_trx_commit=1\nmax_connections=200\n",
                data = datadir.display(),
                dir = path.display(),
                tmp = tmpdir.display(),
            ),
        )
        .expect("write my.cnf");
        chown_to_mysql(path);
        let server = Command::new(program("mariadbd").unwrap())
            // `--defaults-file` must come first.
            .arg(format!("--defaults-file={}", config.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let mut private = Self { port, dir, server };
        private.wait_until_up().await;
        private.root_sql(
            "CREATE USER 'kitara'@'127.0.0.1' IDENTIFIED BY 'kitara'; \
             GRANT ALL PRIVILEGES ON *.* TO 'kitara'@'127.0.0.1'; FLUSH PRIVILEGES;",
        );
        private
    }

    /// A server of the test's own with a database of the demo data; `None` where MariaDB
    /// tests do not run.
    pub async fn with_demo_data() -> Option<(Self, TestDb)> {
        if !Backend::Mysql.available() || !Self::available() {
            return None;
        }
        let server = Self::start().await;
        let db = TestDb::on_server(&server.url()).await;
        kitara::db::migrate_and_seed(&db.conn, true)
            .await
            .expect("seed");
        Some((server, db))
    }

    /// The URL of the server, without a database.
    pub fn url(&self) -> String {
        format!("mysql://kitara:kitara@127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.server.id()
    }

    /// SIGSTOP: the server stops answering, but its port still accepts connections.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    /// Runs SQL as root over the socket, with the `mysql` client.
    fn root_sql(&self, sql: &str) {
        let client = program("mysql").or_else(|| program("mariadb"));
        run(Command::new(client.expect("mysql client"))
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-e", sql]));
    }

    async fn wait_until_up(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.server.try_wait() {
                panic!("mariadbd exited at start: {status}");
            }
            if self.socket().exists()
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "mariadbd did not come up within a minute"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivateMariadb {
    fn drop(&mut self) {
        // A paused server must run again to die of SIGKILL's cleanup.
        signal(self.pid(), "CONT");
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Runs a program to its end; its failure, with what it wrote, fails the test.
fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} ended {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kill -NAME pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A program on the `PATH` or in `/usr/sbin` (where Debian puts `mariadbd`).
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn make_traversable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// As root, hands the directory to `mysql`; as anyone else the server runs as that user
/// and needs nothing.
fn chown_to_mysql(path: &Path) {
    let _ = Command::new("chown")
        .args(["-R", "mysql:mysql"])
        .arg(path)
        .stderr(Stdio::null())
        .status();
}
