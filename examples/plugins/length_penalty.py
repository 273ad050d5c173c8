"""A reward in one file: 0 up to ``max_length`` characters, then -1 per further ``max_length`` characters.

From the command line: ``--reward accuracy,length_penalty.py:length_penalty --set
reward_kwargs='{length_penalty: {max_length: 400}}'``; from Python, pass the function and the same ``reward_kwargs``.
"""

from edge_trl.rewards import completion_text, register_reward


@register_reward("length_penalty", max_value=0.0)
def length_penalty(completions, max_length: int = 1000, **kwargs):
    """0 up to max_length characters, then minus the excess in units of max_length."""
    return [-max(0, len(completion_text(c)) - max_length) / max_length for c in completions]
