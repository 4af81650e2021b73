//! A deterministic generator of realistic RESO EntityEvents for the benchmark.
//!
//! Property events carry an inline `Data` record with Data Dictionary field names, padded with
//! `PublicRemarks` text to a target size (~8 KB by default); Media events carry a `Media` array.
//! A hand-written SplitMix64 keeps the output identical for a seed on every platform and crate
//! version (rand's `StdRng` does not promise that), so runs are comparable over time.

/// SplitMix64: tiny, fast, and stable by construction.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const CITIES: &[&str] = &[
    "Austin",
    "Boulder",
    "Charleston",
    "Denver",
    "Eugene",
    "Fresno",
    "Green Bay",
    "Honolulu",
];
const STATUSES: &[&str] = &[
    "Active",
    "Pending",
    "Closed",
    "ActiveUnderContract",
    "Withdrawn",
];
const WORDS: &[&str] = &[
    "bright",
    "spacious",
    "renovated",
    "kitchen",
    "quartz",
    "hardwood",
    "floors",
    "backyard",
    "mountain",
    "views",
    "walk",
    "to",
    "schools",
    "and",
    "parks",
    "with",
    "a",
    "two-car",
    "garage",
    "open",
    "plan",
    "vaulted",
    "ceilings",
    "primary",
    "suite",
    "en-suite",
    "bath",
];

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct GenConfig {
    /// Target size of a Property event's JSON in bytes.
    pub property_bytes: usize,
    /// Media items per Media event.
    pub media_items: usize,
    /// One event in `media_every` is a Media event (0 = none).
    pub media_every: u64,
    /// Distinct ResourceRecordKeys (events cycle over them, so keys repeat like real updates).
    pub keys: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            property_bytes: 8 * 1024,
            media_items: 12,
            media_every: 5,
            keys: 10_000,
        }
    }
}

/// Every ResourceName the generator produces.
pub const RESOURCES: [&str; 2] = ["Property", "Media"];

/// One generated event: routing facts and its JSON text.
#[derive(Clone)]
pub struct Event {
    pub resource: &'static str,
    pub key: String,
    pub json: String,
}

/// Generates event number `sequence` (1-based) deterministically from `rng`.
pub fn event(rng: &mut Rng, config: &GenConfig, sequence: u64) -> Event {
    let key_n = rng.below(config.keys);
    if config.media_every > 0 && sequence.is_multiple_of(config.media_every) {
        media_event(rng, config, sequence, key_n)
    } else {
        property_event(rng, config, sequence, key_n)
    }
}

fn property_event(rng: &mut Rng, config: &GenConfig, sequence: u64, key_n: u64) -> Event {
    let key = format!("L{key_n:08}");
    let mut json = format!(
        concat!(
            r#"{{"EntityEventSequence":{seq},"ResourceName":"Property","ResourceRecordKey":"{key}","#,
            r#""EntityEventType":"Update","ModificationTimestamp":"2026-11-{day:02}T{h:02}:{m:02}:00Z","#,
            r#""OriginatingSystemName":"BenchMLS","Data":{{"ListingKey":"{key}","ListingId":"B{seq}","#,
            r#""ListPrice":{price},"StandardStatus":"{status}","City":"{city}","StateOrProvince":"CO","#,
            r#""PostalCode":"{zip:05}","BedroomsTotal":{beds},"BathroomsTotalInteger":{baths},"#,
            r#""LivingArea":{area},"LotSizeAcres":{lot}.{lotf:02},"YearBuilt":{year},"#,
            r#""PropertyType":"Residential","PublicRemarks":""#
        ),
        seq = sequence,
        key = key,
        day = 1 + rng.below(28),
        h = rng.below(24),
        m = rng.below(60),
        price = 150_000 + rng.below(2_000_000),
        status = rng.pick(STATUSES),
        city = rng.pick(CITIES),
        zip = 10_000 + rng.below(89_999),
        beds = 1 + rng.below(6),
        baths = 1 + rng.below(4),
        area = 600 + rng.below(5_000),
        lot = rng.below(5),
        lotf = rng.below(100),
        year = 1900 + rng.below(126),
    );
    let tail = r#""}}"#;
    while json.len() + tail.len() < config.property_bytes {
        json.push_str(rng.pick(WORDS));
        json.push(' ');
    }
    json.push_str(tail);
    Event {
        resource: "Property",
        key,
        json,
    }
}

fn media_event(rng: &mut Rng, config: &GenConfig, sequence: u64, key_n: u64) -> Event {
    let key = format!("M{key_n:08}");
    let mut json = format!(
        r#"{{"EntityEventSequence":{sequence},"ResourceName":"Media","ResourceRecordKey":"{key}","Data":{{"ResourceRecordID":"{key}","OriginatingSystemName":"BenchMLS","Media":["#
    );
    for i in 0..config.media_items {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            r#"{{"MediaKey":"{key}-{i}","Order":{i},"MediaCategory":"Photo","MediaURL":"https://media.example/{key}/{i}.jpg","ImageWidth":{w},"ImageHeight":{h},"ShortDescription":"{d}"}}"#,
            w = 640 + rng.below(3000),
            h = 480 + rng.below(2000),
            d = rng.pick(WORDS),
        ));
    }
    json.push_str("]}}");
    Event {
        resource: "Media",
        key,
        json,
    }
}

/// A RESO multi-valued payload of `events`.
pub fn payload(events: &[Event]) -> String {
    let mut out =
        String::with_capacity(events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 80);
    out.push_str(r#"{"@reso.context":"urn:reso:metadata:2.0:resource:entityevent","value":["#);
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&e.json);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_valid_and_sized() {
        let config = GenConfig::default();
        let a: Vec<Event> = {
            let mut rng = Rng::new(7);
            (1..=20).map(|s| event(&mut rng, &config, s)).collect()
        };
        let mut rng = Rng::new(7);
        for (s, e) in (1..=20).zip(&a) {
            let b = event(&mut rng, &config, s);
            assert_eq!(b.json, e.json);
            let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
            assert_eq!(v["ResourceRecordKey"], e.key.as_str());
        }
        let property = a.iter().find(|e| e.resource == "Property").unwrap();
        assert!((8 * 1024..8 * 1024 + 32).contains(&property.json.len()));
        assert!(a.iter().any(|e| e.resource == "Media"));
        let p = payload(&a);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["value"].as_array().unwrap().len(), 20);
    }
}
