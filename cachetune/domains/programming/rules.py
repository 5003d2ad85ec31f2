"""What the programming domain adds to cachetune's checks of generated text (``Domain`` fields)."""

# A generated "question" holding a line of Python (or opening with "The code ...") answers the
# query instead of asking it; "python" says nothing about what a programming question asks.
ANSWER_PATTERN = (r"(?m)^\s*(?:import \w|from \w[\w.]* import |def \w|class \w|print\(|>>>|return\b|"
                  r"for \w+ in .*:$)|^(?i:(?:the|this) code)\b")
FILLER_WORDS = frozenset({"python"})
