"""The notebook: facts the model keeps outside its context, listed by key and summary in the task message."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Note:
    summary: str
    content: str


@dataclass
class Notebook:
    """Key -> note. Errors are returned as strings for the environment to show, never raised."""

    notes: dict[str, Note] = field(default_factory=dict)

    def add(self, key: str, summary: str, content: str) -> str | None:
        if key in self.notes:
            return f"note {key!r} already exists; use updateNote to change it"
        self.notes[key] = Note(summary=summary, content=content)
        return None

    def update(self, key: str, mode: str, content: str, summary: str | None) -> str | None:
        if key not in self.notes:
            return f"no note {key!r}; existing keys: {', '.join(self.notes) or '(none)'}"
        note = self.notes[key]
        if mode == "delete":
            del self.notes[key]
            return None
        note.content = note.content + ("\n" if note.content else "") + content if mode == "append" else content
        if summary is not None:
            note.summary = summary
        return None

    def listing(self) -> str:
        """The key list shown in the first user message."""
        if not self.notes:
            return "Notebook: (empty)"
        lines = [f"- {key}: {note.summary}" for key, note in self.notes.items()]
        return f"Notebook ({len(self.notes)} notes, read one with readNote):\n" + "\n".join(lines)
