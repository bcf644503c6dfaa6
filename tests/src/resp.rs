//! A small Redis client (RESP2) for the raw TCP mode tests: commands, pipelines, and the server's
//! own tools run on a node's loopback (which the agent does not steer).
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use hermes_lab::Node;

/// A Redis reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// A command as Redis reads it: an array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply.
pub fn read(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("no reply line (got {:?})", String::from_utf8_lossy(&line)),
        ));
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let number = || {
        text.parse::<i64>()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad number {text:?}")))
    };
    Ok(match line[0] {
        b'+' => Reply::Status(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Int(number()?),
        b'$' => match number()? {
            -1 => Reply::Bulk(None),
            n => {
                let mut data = vec![0; n as usize + 2];
                reader.read_exact(&mut data)?;
                data.truncate(n as usize);
                Reply::Bulk(Some(data))
            }
        },
        b'*' => Reply::Array(
            (0..number()?.max(0))
                .map(|_| read(reader))
                .collect::<io::Result<_>>()?,
        ),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad reply type {other:?}"),
            ));
        }
    })
}

/// A connection to Redis (through Hermes, when it is a node's address).
pub struct Redis {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Redis {
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends `args` and reads the reply.
    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        Ok(self.pipeline(&[args])?.remove(0))
    }

    /// Sends every command in one write, then reads their replies.
    pub fn pipeline(&mut self, commands: &[&[&[u8]]]) -> io::Result<Vec<Reply>> {
        let bytes: Vec<u8> = commands.iter().flat_map(|args| encode(args)).collect();
        self.writer.write_all(&bytes)?;
        commands.iter().map(|_| read(&mut self.reader)).collect()
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads one reply.
    pub fn reply(&mut self) -> io::Result<Reply> {
        read(&mut self.reader)
    }

    /// Half-closes: Redis is told no more commands come.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.writer.shutdown(std::net::Shutdown::Write)
    }

    /// Reads until the server closes; what came.
    pub fn rest(&mut self) -> io::Result<Vec<u8>> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        Ok(rest)
    }
}

/// Runs `redis-cli` with `args` against the Redis on `node`'s loopback (not steered: the
/// server's own view), and returns its output.
pub fn cli(node: &Node, port: u16, args: &[&str]) -> String {
    let output = node
        .command("redis-cli")
        .expect("command inside the node")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
