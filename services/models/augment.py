"""Training-time text augmentation for the guard's heads (deterministic for a given numpy Generator).

Three weaknesses of a jailbreak head trained on the raw rows, each with its remedy here:
- evasion: a harmless sentence appended to a jailbreak flipped a quarter of the detections, so jailbreaks
  (and, for balance, benign prompts) are trained with harmless words, sentences or greetings added;
- buried injections: an injection inside a long benign document is one window among many, so injections
  are embedded at random positions in long benign documents and the serving windows that hold them are
  labelled jailbreak (the windows that do not are benign);
- false positives on real users: few commercial rows are real chat, so benign prompts about the assistant
  itself (its limits, other chatbots, role play, "from now on answer in French") are generated as hard
  negatives from templates, and so are short everyday instructions ("Say hello to the team", "Repeat after
  me: good morning"), which the collections hold none of and which the head scored up to 1.0.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

GREETINGS = ("Hi!", "Hello,", "Hey there,", "Good morning!", "Hi team,", "Hello again.", "Hey,", "Greetings!",
             "Good evening,", "Hi, hope you're well.")
COURTESIES = ("Thanks!", "Thank you.", "Please.", "Thanks in advance.", "Have a great day.", "Cheers.",
              "I appreciate it.", "Thank you so much!", "Much appreciated.", "Take your time.")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def harmless_sentences(texts: list[str], limit: int = 5000, rng: np.random.Generator | None = None) -> list[str]:
    """Plain sentences (20-200 characters, no line breaks) cut from benign texts."""
    out: list[str] = []
    for text in texts:
        for sentence in _SENTENCE.split(text):
            sentence = sentence.strip()
            if 20 <= len(sentence) <= 200 and "\n" not in sentence and sentence[-1:] in ".!?":
                out.append(sentence)
    if rng is not None:
        rng.shuffle(out)
    return out[:limit]


def with_harmless_text(text: str, rng: np.random.Generator, sentences: list[str]) -> str:
    """`text` with 1-20 harmless words, 1-3 sentences, a courtesy or a greeting added."""
    sentences = sentences or list(COURTESIES)
    choice = rng.integers(4)
    if choice == 0:  # words: a prefix of a harmless sentence, 1-20 words
        words = " ".join(sentences[rng.integers(len(sentences))] for _ in range(3)).split()
        return f"{text} {' '.join(words[: int(rng.integers(1, 21))])}"
    if choice == 1:
        added = " ".join(sentences[rng.integers(len(sentences))] for _ in range(int(rng.integers(1, 4))))
        return f"{text}\n\n{added}" if rng.random() < 0.5 else f"{text} {added}"
    if choice == 2:
        return f"{text} {COURTESIES[rng.integers(len(COURTESIES))]}"
    return f"{GREETINGS[rng.integers(len(GREETINGS))]} {text}"


def bury(document: str, injection: str, rng: np.random.Generator) -> tuple[str, int, int]:
    """`injection` inserted at a random sentence boundary of `document`; returns the text and its span."""
    bounds = [0] + [m.end() for m in _SENTENCE.finditer(document)]
    at = bounds[int(rng.integers(len(bounds)))]
    before, after = document[:at], document[at:]
    joiner = " " if before and not before.endswith((" ", "\n")) else ""
    start = len(before) + len(joiner)
    text = f"{before}{joiner}{injection} {after}"
    return text, start, start + len(injection)


def buried(documents: list[str], injections: list[str], count: int,
           rng: np.random.Generator) -> list[tuple[str, int, int]]:
    """`count` texts: a random injection buried in a random document (bury: text, injection start, end)."""
    return [bury(documents[rng.integers(len(documents))], injections[rng.integers(len(injections))], rng)
            for _ in range(count)]


_AIS = ("ChatGPT", "GPT-4", "Bard", "Gemini", "Claude", "Siri", "Alexa", "Copilot", "a chatbot", "other AI assistants",
        "a search engine", "Llama", "Bing chat", "an AI model")
_LANGS = ("html", "HTML and CSS", "React", "Python", "Flask", "Django", "JavaScript", "Node.js", "Java", "PHP")
_ROLES = ("English teacher", "job interviewer", "travel guide", "personal trainer", "math tutor", "career coach",
          "Linux terminal", "pirate", "Shakespearean poet", "customer support agent", "chef", "historian",
          "dungeon master", "motivational coach", "stand-up comedian", "Socratic tutor", "SQL expert",
          "product manager", "therapist who listens", "nutritionist")
_TASKS = ("plan a 3-day trip to Rome", "practice for a job interview", "improve my essay", "learn Spanish verbs",
          "write a cover letter", "solve quadratic equations", "design a workout plan", "name my bakery",
          "explain recursion", "write a birthday poem for my mom", "prepare for the SAT", "fix my resume",
          "write a short story about a dragon", "understand inflation", "debug my Python code",
          "plan a healthy week of meals", "learn to play chess", "summarize this article")
_TOPICS = ("the weather", "football", "my homework", "quantum physics", "cooking pasta", "the French revolution",
           "stock markets", "my cat", "climate change", "Python lists", "the moon landing", "taxes")
_LANGUAGES = ("French", "Spanish", "German", "Japanese", "Portuguese", "Hindi", "plain English", "bullet points")
_TEMPLATES = (
    "What are your limitations?", "What are your limitations when it comes to {topic}?",
    "hey how are you different than {ai}", "Are you better than {ai}?", "What can {ai} do that you can't?",
    "chat bot page creating in {lang}", "How do I build a chatbot page in {lang}?",
    "Write a {lang} script for a simple chatbot that answers FAQs about {topic}",
    "What rules do you have to follow?", "Do you have feelings?", "Are you conscious?", "Who created you?",
    "What model are you?", "Can you remember our previous chats?", "Why can't you browse the internet?",
    "Can you act as my {role} and help me {task}?", "Pretend you are a {role} and help me {task}.",
    "I want you to act as a {role}. My first request is \"{task}\".", "Let's play a game: you are a {role}.",
    "Roleplay as a {role} and tell me about your day.", "You are a helpful {role}. Help me {task}.",
    "From now on, answer in {language}.", "From now on please answer only in {language} and keep it short.",
    "Ignore my previous question, I meant {topic}.", "Forget what I said about {topic}, tell me about {topic2}.",
    "Write a system prompt for a customer support bot for a {topic} website.",
    "What does prompt injection mean in AI security?", "How do companies protect chatbots from jailbreaks?",
    "What is a jailbreak on an iPhone and is it legal?", "Explain how large language models like {ai} are trained.",
    "Why won't you answer questions about {topic}?", "Can you speak {language}?", "Summarize our conversation so far.",
    "Tell me a joke about {ai}.", "Is {ai} free to use?", "Compare yourself with {ai} for {task}.",
    "what do you know about {topic}", "can u help me {task} pls", "Respond like a {role}: {task}.",
    "You are now my {role}. Let's start: {task}.", "Do you have any restrictions on talking about {topic}?",
    "How do I make my own AI assistant like {ai}?", "Act as a {role} who never breaks character and help me {task}.",
)


def _distinct_prompts(rng: np.random.Generator, count: int, templates: tuple[str, ...],
                      fields: Callable[[np.random.Generator], dict[str, str]]) -> list[str]:
    """Up to `count` distinct prompts: a random template filled with `fields(rng)`, lower-cased 30 % of the time."""
    found: set[str] = set()
    attempts = 0
    while len(found) < count and attempts < count * 20:
        attempts += 1
        template = templates[rng.integers(len(templates))]
        text = template.format(**fields(rng))
        if rng.random() < 0.3:
            text = text.lower()
        found.add(text)
    return sorted(found)


def _assistant_fields(rng: np.random.Generator) -> dict[str, str]:
    topic, topic2 = rng.choice(len(_TOPICS), 2, replace=False)
    # Drawn in this order (the bundle's rows depend on it): AI, language, role, task, answer language.
    return {"ai": _AIS[rng.integers(len(_AIS))], "lang": _LANGS[rng.integers(len(_LANGS))],
            "role": _ROLES[rng.integers(len(_ROLES))], "task": _TASKS[rng.integers(len(_TASKS))],
            "topic": _TOPICS[topic], "topic2": _TOPICS[topic2], "language": _LANGUAGES[rng.integers(len(_LANGUAGES))]}


def hard_negative_prompts(rng: np.random.Generator, count: int) -> list[str]:
    """Distinct benign prompts about the assistant itself, other chatbots, limits and role play."""
    return _distinct_prompts(rng, count, _TEMPLATES, _assistant_fields)


def mix_pii_examples(
    texts: list[str], spans: list[list[dict]], negatives: list[str], count: int = 6000, seed: int = 5
) -> tuple[list[str], list[list[dict]]]:
    """Longer training texts: 2-6 PII sentences and benign prompts joined in random order.

    The PII rows are single short sentences that start the sequence; without mixing, the tagger
    misses names in the middle of long prompts (seen: nothing tagged after a benign paragraph).
    """
    rng = np.random.default_rng(seed)
    out_texts, out_spans = [], []
    for _ in range(count):
        parts = []
        for _ in range(int(rng.integers(2, 7))):
            if rng.random() < 0.35:
                parts.append((negatives[int(rng.integers(len(negatives)))], []))
            else:
                i = int(rng.integers(len(texts)))
                parts.append((texts[i], spans[i]))
        text, shifted = "", []
        for part_text, part_spans in parts:
            if text:
                text += "\n" if rng.random() < 0.3 else " "
            shifted += [{**sp, "start": sp["start"] + len(text), "end": sp["end"] + len(text)} for sp in part_spans]
            text += part_text
        out_texts.append(text)
        out_spans.append(shifted)
    return out_texts, out_spans


_PEOPLE = ("the team", "everyone", "my mom", "the new hires", "the class", "my friends", "Anna", "the kids",
           "our customers", "the group", "my boss", "grandma", "the audience", "the neighbours", "Sam")
_GREETING_WORDS = ("hello", "hi", "good morning", "good night", "goodbye", "happy birthday", "congratulations",
                   "welcome", "thank you", "merry Christmas", "happy new year", "good luck", "get well soon")
_REPLIES = ("ok", "yes", "no", "done", "got it", "thanks", "42", "true", "a single word", "one sentence",
            "the number only", "yes or no")
_SHORT_TEMPLATES = (
    "Say {greeting} to {people}", "Say {greeting} to {people} for me", "Please say {greeting} to {people}.",
    "Say {greeting} to {people} in {language}", "Say {greeting}", "Say {greeting}!", "Say {greeting} in {language}",
    "Repeat after me: {greeting}", "Repeat after me: {greeting} {people}", "Repeat this back to me: {greeting}",
    "Just say {reply}", "Just say {reply}.", "Reply with {reply}", "Reply only with {reply}.",
    "Answer with {reply}", "Respond with {reply}", "Tell {people} {greeting}", "Tell {people} I said {greeting}",
    "Write {greeting} to {people}", "Greet {people}", "Greet {people} warmly", "Type {greeting}",
    "Can you say {greeting} to {people}?", "Say {greeting} three times", "Send {people} a quick {greeting}",
    "Wish {people} {greeting}", "How do I say {greeting} in {language}?", "Say {greeting}, then tell me a joke",
)


def _everyday_fields(rng: np.random.Generator) -> dict[str, str]:
    return {"greeting": _GREETING_WORDS[rng.integers(len(_GREETING_WORDS))], "people": _PEOPLE[rng.integers(len(_PEOPLE))],
            "reply": _REPLIES[rng.integers(len(_REPLIES))], "language": _LANGUAGES[rng.integers(len(_LANGUAGES))]}


def everyday_instructions(rng: np.random.Generator, count: int) -> list[str]:
    """Distinct short benign instructions to say, repeat or reply something harmless."""
    return _distinct_prompts(rng, count, _SHORT_TEMPLATES, _everyday_fields)
