//! Measures the events family's table choices (`EventTable`) on a realistic
//! treasure-hunt event stream: SST bytes once everything is in the bottom
//! level, and the cost of resume reads. docs/STORAGE.md, "Compression",
//! holds the results.
//!
//! `cargo bench --bench event_compression [-- --topics 200 --events 5000
//! --reads 2000 --span 64 --repeat 3 --seed 1 --dir /tmp]`;
//! `-- --samples 20` prints the first hunt's first 20 payloads instead;
//! `-- --config 2` measures only the second configuration (for its memory).
//!
//! Each run opens a fresh data directory with `Db::open_with`, writes every
//! hunt's events through the writer's batch API, compacts the events family
//! into the bottom level, reopens it (an empty block cache, as after a
//! restart) and reads random resume ranges with `Db::read_events`. Runs
//! alternate between the configurations so drift on a noisy machine hits
//! them alike; the table shows each figure's median over the runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cluecast::storage::db::{Db, EventTable, TopicRow};
use cluecast::storage::{Durability, ReadStatus};
use cluecast_proto::Event;

struct Config {
    name: &'static str,
    table: EventTable,
}

const CONFIGS: [Config; 4] = [
    Config {
        name: "4 KiB, no dictionary",
        table: EventTable {
            block_bytes: 4096,
            dict_bytes: 0,
            dict_train_bytes: 0,
        },
    },
    Config {
        name: "16 KiB, 16 KiB dictionary",
        table: EventTable {
            block_bytes: 16384,
            dict_bytes: 16384,
            dict_train_bytes: 100 * 16384,
        },
    },
    Config {
        name: "16 KiB, no dictionary",
        table: EventTable {
            block_bytes: 16384,
            dict_bytes: 0,
            dict_train_bytes: 0,
        },
    },
    Config {
        name: "4 KiB, 16 KiB dictionary",
        table: EventTable {
            block_bytes: 4096,
            dict_bytes: 16384,
            dict_train_bytes: 100 * 16384,
        },
    },
];

/// Measures the events family's table choices on a treasure-hunt stream.
#[derive(clap::Parser)]
struct Params {
    /// Hunts (topics) written.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    topics: u64,
    /// Events per hunt; more than `--span`.
    #[arg(long, default_value_t = 5000)]
    events: u64,
    /// Resume reads timed per run.
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    /// Events per resume read.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    span: u64,
    /// Runs per configuration (the table shows medians).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the data directories go (default: the system's temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print this many payloads of the first hunt and stop.
    #[arg(long, default_value_t = 0)]
    samples: usize,
    /// Measure only this configuration (its row, from 1).
    #[arg(long = "config", value_parser = clap::value_parser!(u64).range(1..=CONFIGS.len() as u64))]
    only: Option<u64>,
    /// Passed by `cargo bench`; nothing to do with the measurement.
    #[arg(long, hide = true)]
    bench: bool,
}

fn params() -> Params {
    let p = <Params as clap::Parser>::parse();
    if p.events <= p.span {
        eprintln!(
            "--events ({}) must be more than --span ({})",
            p.events, p.span
        );
        std::process::exit(2);
    }
    p
}

// ---- a tiny deterministic PRNG (SplitMix64) --------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// In `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// Zipf-like: low indexes far more often, as words in real text.
    fn skewed(&mut self, n: usize) -> usize {
        ((self.unit() * self.unit()) * n as f64) as usize
    }
    fn hex(&mut self, out: &mut String, digits: usize) {
        for _ in 0..digits {
            out.push(char::from(b"0123456789abcdef"[self.below(16) as usize]));
        }
    }
    fn uuid(&mut self, out: &mut String) {
        for (i, n) in [8, 4, 4, 4, 12].into_iter().enumerate() {
            if i > 0 {
                out.push('-');
            }
            if i == 2 {
                out.push('4');
                self.hex(out, n - 1);
            } else {
                self.hex(out, n);
            }
        }
    }
}

// ---- a treasure hunt's events, as a game backend publishes them -------------

const CITIES: &[(&str, f64, f64)] = &[
    ("berlin", 52.520008, 13.404954),
    ("hamburg", 53.551086, 9.993682),
    ("munich", 48.137154, 11.576124),
    ("vienna", 48.208176, 16.373819),
    ("zurich", 47.376888, 8.541694),
    ("amsterdam", 52.367573, 4.904139),
    ("copenhagen", 55.676098, 12.568337),
    ("prague", 50.075539, 14.437800),
    ("lyon", 45.764042, 4.835659),
    ("barcelona", 41.385063, 2.173404),
    ("edinburgh", 55.953251, -3.188267),
    ("krakow", 50.064651, 19.944981),
];

const FIRST: &[&str] = &[
    "Lena", "Max", "Sophie", "Jonas", "Mia", "Paul", "Emma", "Leon", "Hannah", "Felix", "Anna",
    "Noah", "Lea", "Elias", "Marie", "Finn", "Clara", "Luca", "Nora", "Ben", "Ida", "Tom", "Greta",
    "Oskar", "Lotta", "Emil", "Frida", "Karl", "Mila", "Theo", "Zoe", "Jan",
];

const NICK: &[&str] = &[
    "fox", "owl", "hunter", "scout", "ninja", "rider", "pirate", "wolf", "raven", "seeker",
    "ghost", "tiger", "rocket", "wizard", "panda", "bear",
];

const ITEMS: &[(&str, u32)] = &[
    ("map_fragment", 10),
    ("golden_key", 50),
    ("compass", 20),
    ("old_coin", 5),
    ("sealed_letter", 25),
    ("lantern", 15),
    ("brass_token", 10),
    ("cipher_wheel", 40),
    ("feather", 5),
    ("pocket_watch", 30),
    ("silver_ring", 35),
    ("treasure_chest", 100),
];

const PLACES: &[&str] = &[
    "fountain",
    "old bridge",
    "clock tower",
    "market hall",
    "north gate",
    "library steps",
    "harbour crane",
    "bell tower",
    "park bench by the pond",
    "statue of the founder",
    "tram depot",
    "town hall",
    "botanical garden",
    "river stairs",
    "observatory",
    "old brewery",
    "chapel",
    "bandstand",
    "flea market",
    "lighthouse",
    "railway arch",
    "castle wall",
    "glasshouse",
    "museum courtyard",
];

/// Chat and clue vocabulary, most common first.
// rustfmt would give each word a line.
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "i", "we", "it", "is", "to", "a", "you", "at", "on", "here", "found", "go", "this",
    "near", "anyone", "where", "ok", "yes", "no", "lol", "wait", "next", "clue", "look", "behind",
    "got", "just", "left", "right", "team", "come", "think", "one", "now", "there", "what",
    "under", "hint", "key", "map", "that", "still", "again", "stuck", "close", "far", "find",
    "second", "minutes", "bridge", "tower", "gate", "door", "sign", "stone", "water", "tree",
    "wall", "up", "down", "round", "corner", "street", "square", "bench", "red", "old", "big",
    "small", "other", "side", "north", "south", "east", "west", "meet", "hurry", "nice", "great",
    "thanks", "sorry", "omg", "haha", "gg", "who", "has", "did", "get", "points", "first", "last",
    "place", "score", "riddle", "answer", "number", "count", "steps", "read", "letters", "year",
    "carved", "above", "between", "across", "past", "park", "shop", "cafe", "church", "river",
    "statue", "lamp", "bell", "clock", "window", "roof", "hidden", "shadow", "light", "golden",
    "silver", "brass", "coin", "letter", "chest", "compass", "lantern", "feather", "watch", "ring",
    "easy", "hard", "crowded", "closed", "open", "battery", "dying", "phone", "lost", "signal",
    "gps", "jumping", "rain", "cold", "lunch", "coffee", "ice", "cream", "almost", "done",
    "winning", "tied", "ahead", "maybe", "definitely", "seriously", "guys", "blue", "green",
    "follow", "quick", "slow", "turn", "walk", "run", "running", "walking", "stairs", "tunnel",
    "alley", "courtyard", "fence", "gravel", "path", "hill", "top", "bottom", "inside", "outside",
    "front", "back", "entrance", "exit", "parking", "bus", "stop", "station", "platform", "ticket",
    "machine", "poster", "graffiti", "mural", "arrow", "painted", "yellow", "purple", "orange",
    "white", "black", "grey", "pink", "huge", "tiny", "narrow", "wide", "broken", "rusty", "shiny",
    "wooden", "metal", "glass", "plastic", "paper", "box", "bag", "bottle", "flag", "flower",
    "bush", "hedge", "grass", "pond", "duck", "dog", "cat", "pigeon", "kids", "tourists", "guard",
    "police", "vendor", "musician", "bike", "scooter", "car", "boat", "ferry", "crane", "ship",
    "anchor", "rope", "chain", "lock", "hinge", "plaque", "inscription", "latin", "roman",
    "numerals", "backwards", "mirror", "reflection", "noon", "sunset", "morning", "tonight",
    "tomorrow", "yesterday", "already", "never", "always", "sometimes", "exactly", "probably",
    "obviously", "honestly", "literally", "basically", "actually", "totally", "kinda", "pretty",
    "really", "very", "too", "much", "many", "few", "some", "all", "none", "both", "each", "every",
    "half", "double", "twice", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "twenty", "hundred", "meters", "blocks", "km", "app", "crashed", "reload", "refresh", "update",
    "screen", "photo", "picture", "selfie", "video", "zoom", "scan", "qr", "code", "password",
    "cipher", "decode", "solve", "solved", "unsolved", "trick", "trap", "fake", "real", "wrong",
    "correct", "careful", "out", "nope", "yep", "yay", "ugh", "hmm", "brb", "omw", "idk", "tbh",
    "nvm", "pls", "thx", "wow", "cool", "awesome", "sweet", "damn", "oops", "yikes", "bravo",
    "legend", "genius", "hero", "champion", "rookie",
];

struct Player {
    id: String,
    name: String,
    team: u32,
    score: u32,
}

struct Hunt {
    id: String,
    city: &'static str,
    lat: f64,
    lon: f64,
    players: Vec<Player>,
    teams: u32,
    clue: u32,
    hint: u32,
    leaderboard_rev: u32,
    ts_ms: u64,
    rng: Rng,
}

/// Free text of about `words` words, stopping before `out` exceeds `limit`
/// bytes.
fn text(rng: &mut Rng, out: &mut String, words: usize, limit: usize) {
    let mut word = String::new();
    for i in 0..words {
        word.clear();
        if i > 0 {
            word.push(' ');
        }
        let w = WORDS[rng.skewed(WORDS.len())];
        if i == 0 && rng.below(3) == 0 {
            let mut cs = w.chars();
            if let Some(c) = cs.next() {
                word.extend(c.to_uppercase());
                word.push_str(cs.as_str());
            }
        } else {
            word.push_str(w);
        }
        match rng.below(40) {
            0 => word.push_str(&format!(" {}", rng.range(2, 120))),
            1 => word.push('!'),
            2 => word.push(','),
            3 => {
                // "nooo": chat spelling
                let last = word.chars().last().unwrap_or('o');
                word.extend(std::iter::repeat_n(last, rng.range(1, 4) as usize));
            }
            4 if word.len() > 3 => {
                // a typo: two letters swapped
                let mut b = word.clone().into_bytes();
                let i = rng.range(1, b.len() as u64 - 2) as usize;
                b.swap(i, i + 1);
                word = String::from_utf8(b).unwrap_or(word);
            }
            _ => {}
        }
        if out.len() + word.len() > limit {
            return;
        }
        out.push_str(&word);
    }
    let end = match rng.below(6) {
        0 => "?",
        1 => "!!",
        2 => ".",
        3 => " \\ud83d\\ude02", // an emoji, JSON-escaped
        _ => "",
    };
    if out.len() + end.len() <= limit {
        out.push_str(end);
    }
}

impl Hunt {
    fn new(seed: u64, n: usize) -> Hunt {
        let mut rng = Rng(seed ^ (n as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let (city, lat, lon) = *rng.pick(CITIES);
        let mut id = format!("{city}-{}-", 2024 + rng.below(2));
        rng.hex(&mut id, 6);
        let teams = rng.range(2, 12) as u32;
        let players = (0..rng.range(20, 300))
            .map(|_| {
                let mut pid = String::from("usr_");
                rng.hex(&mut pid, 12);
                let name = match rng.below(3) {
                    0 => rng.pick(FIRST).to_string(),
                    1 => format!("{}{}", rng.pick(FIRST), rng.range(1, 99)),
                    _ => format!("{}_{}{}", rng.pick(NICK), rng.pick(NICK), rng.range(1, 999)),
                };
                Player {
                    id: pid,
                    name,
                    team: rng.range(1, teams as u64) as u32,
                    score: 0,
                }
            })
            .collect();
        Hunt {
            id,
            city,
            lat,
            lon,
            players,
            teams,
            clue: 1,
            hint: 0,
            leaderboard_rev: 0,
            // Some time in June 2024, in ms since the Unix epoch.
            ts_ms: 1_717_200_000_000 + rng.below(30 * 86_400_000),
            rng,
        }
    }

    fn point(&mut self, out: &mut String, radius_deg: f64) {
        let lat = self.lat + (self.rng.unit() - 0.5) * radius_deg;
        let lon = self.lon + (self.rng.unit() - 0.5) * radius_deg * 1.6;
        out.push_str(&format!("\"lat\":{lat:.6},\"lon\":{lon:.6}"));
    }

    /// The next event's JSON payload, 80 to 400 bytes.
    fn next_event(&mut self, out: &mut String) {
        const MAX: usize = 400;
        out.clear();
        // Events come in bursts: seconds apart, sometimes a quiet minute.
        self.ts_ms += match self.rng.below(10) {
            0 => self.rng.range(10_000, 90_000),
            1..=3 => self.rng.range(1_000, 10_000),
            _ => self.rng.range(20, 1_000),
        };
        let kind = self.rng.below(100);
        out.push_str("{\"type\":\"");
        out.push_str(match kind {
            0..=29 => "item_found",
            30..=44 => "leaderboard",
            45..=52 => "clue_released",
            53..=62 => "hint",
            _ => "chat",
        });
        out.push_str("\",\"id\":\"");
        let mut r = Rng(self.rng.next());
        r.uuid(out);
        out.push_str(&format!(
            "\",\"hunt\":\"{}\",\"ts\":{}",
            self.id, self.ts_ms
        ));
        let p = self.rng.below(self.players.len() as u64) as usize;
        match kind {
            0..=29 => {
                let (item, points) = *self.rng.pick(ITEMS);
                self.players[p].score += points;
                let pl = &self.players[p];
                out.push_str(&format!(
                    ",\"player\":{{\"id\":\"{}\",\"name\":\"{}\",\"team\":{}}}",
                    pl.id, pl.name, pl.team
                ));
                out.push_str(&format!(
                    ",\"item\":{{\"kind\":\"{item}\",\"id\":\"itm_{}\",\"points\":{points}}}",
                    self.rng.range(1000, 99999)
                ));
                let score = pl.score;
                out.push_str(&format!(",\"clue\":{},\"loc\":{{", self.clue));
                self.point(out, 0.02);
                let acc = 3.0 + self.rng.unit() * 25.0;
                out.push_str(&format!(",\"acc_m\":{acc:.1}}},\"score\":{score}}}"));
            }
            30..=44 => {
                self.leaderboard_rev += 1;
                let teams = self.rng.below(3) == 0;
                out.push_str(&format!(
                    ",\"rev\":{},\"scope\":\"{}\",\"top\":[",
                    self.leaderboard_rev,
                    if teams { "teams" } else { "players" }
                ));
                let entries: Vec<String> = if teams {
                    let mut scores = vec![0u32; self.teams as usize + 1];
                    for pl in &self.players {
                        scores[pl.team as usize] += pl.score;
                    }
                    let mut ranked: Vec<(usize, u32)> =
                        scores.into_iter().enumerate().skip(1).collect();
                    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    ranked
                        .iter()
                        .enumerate()
                        .map(|(i, (team, score))| {
                            format!("{{\"rank\":{},\"team\":{team},\"score\":{score}}}", i + 1)
                        })
                        .collect()
                } else {
                    let mut ranked: Vec<&Player> = self.players.iter().collect();
                    ranked.sort_by(|a, b| b.score.cmp(&a.score).then(a.id.cmp(&b.id)));
                    ranked
                        .iter()
                        .take(10)
                        .enumerate()
                        .map(|(i, pl)| {
                            format!(
                                "{{\"rank\":{},\"id\":\"{}\",\"name\":\"{}\",\"score\":{}}}",
                                i + 1,
                                pl.id,
                                pl.name,
                                pl.score
                            )
                        })
                        .collect()
                };
                let tail = format!("],\"players\":{}}}", self.players.len());
                for (i, entry) in entries.iter().enumerate() {
                    if out.len() + 1 + entry.len() + tail.len() > MAX {
                        break;
                    }
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(entry);
                }
                out.push_str(&tail);
            }
            45..=52 => {
                self.clue += 1;
                self.hint = 0;
                let place = *self.rng.pick(PLACES);
                out.push_str(&format!(
                    ",\"clue\":{{\"no\":{},\"title\":\"The {place}\",\"area\":{{",
                    self.clue
                ));
                self.point(out, 0.03);
                let radius = self.rng.range(5, 40) * 10;
                let expires = self.ts_ms + self.rng.range(10, 60) * 60_000;
                out.push_str(&format!(
                    ",\"radius_m\":{radius}}},\"expires\":{expires},\"city\":\"{}\",\"text\":\"",
                    self.city
                ));
                let words = self.rng.range(8, 30) as usize;
                text(&mut self.rng, out, words, MAX - 3);
                out.push_str("\"}}");
            }
            53..=62 => {
                self.hint += 1;
                out.push_str(&format!(
                    ",\"clue\":{},\"hint\":{},\"cost\":{},\"text\":\"",
                    self.clue,
                    self.hint,
                    self.hint * 5
                ));
                let words = self.rng.range(6, 24) as usize;
                text(&mut self.rng, out, words, MAX - 2);
                out.push_str("\"}");
            }
            _ => {
                let pl = &self.players[p];
                let (id, name, team) = (pl.id.clone(), pl.name.clone(), pl.team);
                let channel = if self.rng.below(4) == 0 {
                    "all".to_string()
                } else {
                    format!("team-{team}")
                };
                out.push_str(&format!(
                    ",\"from\":{{\"id\":\"{id}\",\"name\":\"{name}\"}},\"channel\":\"{channel}\",\"text\":\""
                ));
                let words = 1 + self.rng.skewed(40);
                text(&mut self.rng, out, words, MAX - 2);
                out.push_str("\"}");
            }
        }
        debug_assert!(out.len() <= MAX, "{out}");
    }
}

// ---- one run ----------------------------------------------------------------

struct Run {
    sst_bytes: u64,
    raw_bytes: u64,
    write_s: f64,
    compact_s: f64,
    read_median_us: f64,
    read_p99_us: f64,
}

fn run(p: &Params, table: EventTable, dir: &Path) -> Result<Run, String> {
    let _ = std::fs::remove_dir_all(dir);
    let mut hunts: Vec<Hunt> = (0..p.topics as usize)
        .map(|n| Hunt::new(p.seed, n))
        .collect();
    let names: Vec<String> = hunts.iter().map(|h| format!("hunt.{}", h.id)).collect();
    let recovered = Db::open_with(dir, Durability::Async, 1, table)?;
    let db = recovered.db;
    let start = Instant::now();
    let mut raw_bytes = 0u64;
    let mut payload = String::new();
    // All hunts run at once: each batch holds the next events of every hunt.
    const PER_BATCH: u64 = 25;
    let mut seq = 0u64;
    while seq < p.events {
        let upto = (seq + PER_BATCH).min(p.events);
        let mut batch = db.batch()?;
        for (t, hunt) in hunts.iter_mut().enumerate() {
            for s in seq + 1..=upto {
                hunt.next_event(&mut payload);
                raw_bytes += payload.len() as u64;
                let event = Event {
                    seq: s,
                    epoch: 1,
                    publish_ts_ns: hunt.ts_ms * 1_000_000 + hunt.rng.range(200_000, 3_000_000),
                    topic: names[t].as_bytes(),
                    payload: payload.as_bytes(),
                };
                batch.put_event(t as u64 + 1, &event);
            }
            let row = TopicRow {
                id: t as u64 + 1,
                epoch: 1,
                last_seq: upto,
            };
            batch.put_topic(names[t].as_bytes(), row);
        }
        batch.commit(false)?;
        seq = upto;
    }
    let write_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let sst_bytes = db.compact_events()?;
    let compact_s = start.elapsed().as_secs_f64();
    drop(db);

    // Reopen: an empty block cache, as after a restart.
    let db = Db::open_with(dir, Durability::Async, 1, table)?.db;
    let rows: Vec<TopicRow> = names
        .iter()
        .map(|n| {
            db.topic(n.as_bytes())
                .map(|r| r.expect("every topic is stored"))
        })
        .collect::<Result<_, _>>()?;
    let mut rng = Rng(p.seed ^ 0x5eed);
    let mut out = Vec::with_capacity(1 << 20);
    let mut times = Vec::with_capacity(p.reads);
    for _ in 0..p.reads {
        let t = rng.below(p.topics) as usize;
        let from = rng.range(1, p.events - p.span + 1);
        out.clear();
        let start = Instant::now();
        let (status, _) = db.read_events(
            rows[t],
            names[t].as_bytes(),
            from,
            from + p.span - 1,
            usize::MAX,
            &mut out,
        )?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
        if status != ReadStatus::Found || out.len() < (p.span * 80) as usize {
            return Err(format!(
                "read {from}.. of topic {t}: {status:?}, {} bytes",
                out.len()
            ));
        }
    }
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
    times.sort_by(f64::total_cmp);
    Ok(Run {
        sst_bytes,
        raw_bytes,
        write_s,
        compact_s,
        read_median_us: times[times.len() / 2],
        read_p99_us: times[(times.len() * 99 / 100).min(times.len() - 1)],
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let p = params();
    if p.samples > 0 {
        let mut hunt = Hunt::new(p.seed, 0);
        let mut payload = String::new();
        for _ in 0..p.samples {
            hunt.next_event(&mut payload);
            println!("{payload}");
        }
        return;
    }
    let dir = p
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("cluecast-event-compression-{}", std::process::id()));
    let total = p.topics * p.events;
    eprintln!(
        "{} hunts x {} events, {} reads of {} events per run, {} runs per configuration",
        p.topics, p.events, p.reads, p.span, p.repeat
    );
    let mut runs: Vec<Vec<Run>> = CONFIGS.iter().map(|_| Vec::new()).collect();
    for rep in 0..p.repeat {
        for (c, config) in CONFIGS.iter().enumerate() {
            if p.only.is_some_and(|only| only != c as u64 + 1) {
                continue;
            }
            let r = run(&p, config.table, &dir).unwrap_or_else(|e| panic!("{}: {e}", config.name));
            eprintln!(
                "run {} {:<26} sst {:>10} B  write {:>5.1} s  compact {:>5.1} s  read median {:>6.1} us  p99 {:>7.1} us",
                rep + 1,
                config.name,
                r.sst_bytes,
                r.write_s,
                r.compact_s,
                r.read_median_us,
                r.read_p99_us
            );
            runs[c].push(r);
        }
    }
    let raw = runs.iter().flatten().next().expect("a run").raw_bytes;
    println!(
        "{} events, {:.1} MiB of payload ({:.0} B per event on average)\n",
        total,
        raw as f64 / (1 << 20) as f64,
        raw as f64 / total as f64
    );
    println!("| events table | SST MiB | B per event | of raw payload | read of {} events: median µs | p99 µs | compaction s |", p.span);
    println!("|---|---|---|---|---|---|---|");
    for (config, rs) in CONFIGS.iter().zip(&runs).filter(|(_, rs)| !rs.is_empty()) {
        let m = |f: fn(&Run) -> f64| median(rs.iter().map(f).collect());
        let sst = m(|r| r.sst_bytes as f64);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} % | {:.0} | {:.0} | {:.1} |",
            config.name,
            sst / (1 << 20) as f64,
            sst / total as f64,
            100.0 * sst / raw as f64,
            m(|r| r.read_median_us),
            m(|r| r.read_p99_us),
            m(|r| r.compact_s)
        );
    }
}
