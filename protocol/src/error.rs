//! Errors as one line of text, for logs and for messages shown to an operator.

/// The error and its causes in one line ("client error (Connect): tcp connect error:
/// Connection refused"): reqwest and hyper keep the useful part in `source()`, and their own
/// message alone does not say what went wrong.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::fmt;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn every_cause_is_shown_in_order() {
        let e = Layer(
            "client error (Connect)",
            Some(Box::new(Layer(
                "tcp connect error",
                Some(Box::new(Layer("Connection refused", None))),
            ))),
        );
        assert_eq!(
            super::error_chain(&e),
            "client error (Connect): tcp connect error: Connection refused"
        );
        assert_eq!(super::error_chain(&Layer("alone", None)), "alone");
    }
}
