//! Timestamps as the API server writes them, and ages as kubectl shows them.

use jiff::Timestamp;

/// Now, RFC 3339 with seconds precision (`metav1.Time`): the fraction is
/// cut, as Go's `time.Format(time.RFC3339)` does, never rounded up.
pub fn now() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The age of an RFC 3339 timestamp, in the form of apimachinery's
/// `duration.HumanDuration` ("5s", "3m20s", "2d4h"...); "<unknown>" if unset.
pub fn human_age(timestamp: &str) -> String {
    match timestamp.parse::<Timestamp>() {
        Ok(t) => human_duration(Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let seconds = seconds.max(0);
    let (minutes, hours) = (seconds / 60, seconds / 3600);
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else {
        let (years, days) = (hours / 24 / 365, hours / 24 % 365);
        if years < 8 && days > 0 {
            format!("{years}y{days}d")
        } else {
            format!("{years}y")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(100 * 86400), "100d");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn now_is_rfc3339_seconds() {
        let t = now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z'));
        assert!(t.parse::<Timestamp>().is_ok());
    }
}
