"""Per-channel text chat: one conversation per channel we are a member of.

The panel renders what it is given and emits intents; it never touches the network or crypto. The
app routes :attr:`ChatPanel.send_requested` to the connection (which seals the text for the channel)
and feeds opened messages back with :meth:`ChatPanel.add_message`. The panel does *not* show a
message when it asks for it to be sent: the app adds our own messages (``own=True``) once they are
on their way, so what is shown is what was sent.

Rendering: each conversation is a read-only :class:`QTextBrowser`; every history entry (message or
notice) is appended as its own text block(s) with the cursor API, so the 1000-entry cap drops the
oldest blocks without re-rendering the rest. All user-supplied text (names, messages, notices) is
HTML-escaped; the only markup is ours: timestamps, name colours, ``@mention`` highlights and
``http(s)`` links (the only scheme ever turned into a link).

Timestamps are the sender's clock (``sent_ms``, untrusted): shown, never used for ordering; the
history is in arrival order.
"""

from __future__ import annotations

import html
import logging
import re
import time
import unicodedata
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from PySide6.QtCore import QDateTime, QEvent, QLocale, QPoint, Qt, Signal, Slot
from PySide6.QtGui import (
    QColor,
    QFocusEvent,
    QIcon,
    QKeyEvent,
    QKeySequence,
    QPalette,
    QShortcut,
    QShowEvent,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
)
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from voipclient.crypto.text import MAX_TEXT_BYTES
from voipclient.ui.icons import colour_swatch
from voipclient.ui.mentions import (
    HERE,
    Completion,
    apply_completion,
    complete,
    find_mentions,
    mentions_user,
)

__all__ = [
    "GROUP_WINDOW_MS",
    "MAX_HISTORY",
    "MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_CHARS",
    "ChatPanel",
    "message_room",
    "too_long",
]

log = logging.getLogger("voipclient.ui.chat")

#: Longest message we send, in characters (code points) after trimming surrounding whitespace.
MAX_MESSAGE_CHARS: Final = 2000
#: ... and in UTF-8 bytes, the protocol's limit (crypto/text.py): 1,000 emoji reach it first.
MAX_MESSAGE_BYTES: Final = MAX_TEXT_BYTES
#: The "N left" counter shows once a message uses this share of either limit.
_COUNTER_FROM: Final = 0.8


def message_room(text: str) -> int:
    """How much more of ``text`` (trimmed) can be sent, in the unit that runs out first: the
    smaller of the characters and the UTF-8 bytes left (negative: over by that many)."""
    text = text.strip()
    return min(MAX_MESSAGE_CHARS - len(text), MAX_MESSAGE_BYTES - len(text.encode("utf-8")))


def too_long(text: str) -> str | None:
    """Why ``text`` (trimmed) cannot be sent, or None."""
    text = text.strip()
    size = len(text.encode("utf-8"))
    if len(text) > MAX_MESSAGE_CHARS:
        return f"{len(text)} characters, at most {MAX_MESSAGE_CHARS}"
    if size > MAX_MESSAGE_BYTES:
        return f"{size} bytes (emoji and accents take 2-4 each), at most {MAX_MESSAGE_BYTES}"
    return None


#: History kept per channel, in entries (messages and notices); the oldest are dropped.
MAX_HISTORY: Final = 1000
#: Consecutive messages from one author at most this far apart (sender clock, ms) share a header.
GROUP_WINDOW_MS: Final = 5 * 60 * 1000
#: Rows the completion popup shows before it scrolls.
_POPUP_ROWS: Final = 6
#: A sender timestamp outside 1970..9999 is shown as unknown (it is untrusted input).
_MAX_SENT_MS: Final = 253_402_300_799_999

_URL_RE: Final = re.compile(r"https?://[^\s<>\"'`\x00-\x1f\x7f]+", re.IGNORECASE)
#: Characters that end a sentence rather than a URL ("see https://x.org/a.").
_URL_TRAILING: Final = ".,;:!?'\")]}"
#: Mention-of-me highlight: strong, readable on light and dark themes alike.
_ME_BG: Final = "#ffd24d"
_ME_FG: Final = "#000000"
_MENTION_BLOCK_BG: Final = QColor(255, 196, 0, 60)
_MENTION_TAB_COLOR: Final = QColor(220, 50, 47)
_ERROR_STYLE: Final = "color: #e53935;"

_MESSAGE: Final = "message"
_NOTICE: Final = "notice"


@dataclass(slots=True)
class _Entry:
    """One line of history (a message or a notice) and where it sits in the document."""

    kind: str
    author: str
    text: str
    #: Sender clock for messages, our clock for notices (Unix ms).
    sent_ms: int
    own: bool = False
    mentions_me: bool = False
    #: Shows time and author (first message of a group, and every notice).
    header: bool = True
    #: Document blocks the entry occupies (1 unless Qt split the inserted HTML).
    blocks: int = 0
    #: Names that are mentions when rendered (members and own name at arrival).
    names: frozenset[str] = frozenset()


@dataclass(eq=False, slots=True)
class _Conversation:
    channel_id: int
    name: str
    view: QTextBrowser
    joined: bool = True
    entries: deque[_Entry] = field(default_factory=deque)
    unread: int = 0
    mentions: int = 0
    draft: str = ""
    #: Messages sent and not yet known to have left (restored to the draft if sending fails).
    unsent: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    #: Keep the view scrolled to the newest message (the user has not scrolled up).
    stick_to_bottom: bool = True
    #: The channel's colour ("#rrggbb"), shown as a swatch on its tab.
    colour: str = ""


def _utf16_pos(text: str, index: int) -> int:
    """Qt cursor position (UTF-16 code units) of the Python index ``index`` in ``text``."""
    return len(text[:index].encode("utf-16-le")) // 2


def _py_index(text: str, utf16_pos: int) -> int:
    """Python index of the Qt cursor position ``utf16_pos`` (UTF-16 code units) in ``text``."""
    units = 0
    for index, char in enumerate(text):
        if units >= utf16_pos:
            return index
        units += 2 if ord(char) > 0xFFFF else 1
    return len(text)


def _clean(text: str) -> str:
    """Normalise untrusted text for display: one kind of newline, no control characters.

    Paragraph/line separators become newlines (so one entry stays one block); other control
    characters become U+FFFD so they are visible rather than acted on.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n")
    return "".join(
        "\ufffd" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c for c in text
    )


def _escape(text: str) -> str:
    """HTML for plain ``text``: escaped, newlines kept, runs of spaces kept."""
    escaped = html.escape(text, quote=False).replace("\t", "    ")
    # Rich text collapses whitespace runs; keep them (ASCII art, code) with non-breaking spaces.
    escaped = escaped.replace("  ", " &nbsp;")
    return escaped.replace("\n", "<br>")


def _attr(text: str) -> str:
    return html.escape(text, quote=True)


def _find_urls(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for match in _URL_RE.finditer(text):
        start, end = match.span()
        while end > start and text[end - 1] in _URL_TRAILING:
            # Keep a closing bracket that closes one opened inside the URL (Wikipedia links).
            closing = text[end - 1]
            opening = {")": "(", "]": "[", "}": "{"}.get(closing)
            url = text[start:end]
            if opening is not None and url.count(opening) >= url.count(closing):
                break
            end -= 1
        if end - start > len("https://"):
            spans.append((start, end))
    return spans


def _format_time(sent_ms: int) -> tuple[str, str]:
    """(``HH:MM`` local time, full local date and time) of a Unix ms timestamp."""
    if not 0 <= sent_ms <= _MAX_SENT_MS:
        return "--:--", "The sender's clock gave an invalid time"
    when = QDateTime.fromMSecsSinceEpoch(sent_ms).toLocalTime()
    return when.toString("HH:mm"), QLocale().toString(when, QLocale.FormatType.LongFormat)


class _ChatInput(QPlainTextEdit):
    """The message editor. Key presses go to ``key_handler`` first (send, newline, completion);
    it returns True when it handled the key."""

    focus_lost = Signal()

    def __init__(self, key_handler: Callable[[QKeyEvent], bool], parent: QWidget) -> None:
        super().__init__(parent)
        self._key_handler = key_handler
        self._overrides: Callable[[QKeyEvent], bool] = lambda _event: False

    def set_override_check(self, check: Callable[[QKeyEvent], bool]) -> None:
        self._overrides = check

    def event(self, e: QEvent) -> bool:
        # Tab is handled here, before QWidget.event turns it into a focus change.
        if e.type() == QEvent.Type.KeyPress and isinstance(e, QKeyEvent) and self._key_handler(e):
            e.accept()
            return True
        if (
            e.type() == QEvent.Type.ShortcutOverride
            and isinstance(e, QKeyEvent)
            and self._overrides(e)
        ):
            # Esc closes the completion popup instead of triggering a window shortcut.
            e.accept()
            return True
        return super().event(e)

    def focusOutEvent(self, e: QFocusEvent) -> None:
        super().focusOutEvent(e)
        self.focus_lost.emit()


class ChatPanel(QWidget):
    """Per-channel chat: a conversation tab per channel, its history, and a message editor."""

    #: (channel_id, text): the user sent ``text`` (trimmed, 1..2000 characters) to the channel.
    send_requested = Signal(int, str)
    #: (channel_id, unread, mentions): the channel's unread count or mention count changed.
    unread_changed = Signal(int, int, int)
    #: (channel_id, author, text): someone else's message mentions us (``@me`` or ``@here``);
    #: emitted whether or not the conversation is visible (the app decides whether to notify).
    mentioned = Signal(int, str, str)

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_history: int = MAX_HISTORY,
    ) -> None:
        """``clock`` gives the time (Unix seconds) stamped on notices; ``max_history`` the
        entries kept per channel."""
        super().__init__(parent)
        if max_history < 2:
            raise ValueError(f"max_history must be at least 2, not {max_history}")
        self.setObjectName("chatPanel")
        self._clock = clock
        self._max_history = max_history
        self._own_name = ""
        self._conversations: dict[int, _Conversation] = {}
        self._members: dict[int, tuple[str, ...]] = {}
        #: The channel whose draft is in the editor (None while the editor is disabled).
        self._input_owner: int | None = None
        self._completion: Completion | None = None
        #: Start of the "@..." whose popup Esc closed; it stays closed until that word changes.
        self._dismissed_at: int | None = None
        self._updating_input = False

        self._tabs = QTabWidget(self)
        self._tabs.setObjectName("chatTabs")
        self._tabs.setDocumentMode(True)
        self._tabs.setUsesScrollButtons(True)
        self._tabs.setElideMode(Qt.TextElideMode.ElideRight)
        self._tabs.setAccessibleName("Conversations")
        self._tabs.setToolTip("Text chat of the channels you are in (Ctrl+PgUp/PgDn to switch)")
        self._tabs.currentChanged.connect(self._on_current_changed)

        self._placeholder = QLabel("Join a channel to chat with the people in it.", self)
        self._placeholder.setObjectName("chatEmptyNote")
        self._placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._placeholder.setWordWrap(True)

        self._input = _ChatInput(self._on_input_key, self)
        self._input.setObjectName("chatInput")
        self._input.setAccessibleName("Message")
        self._input.setAccessibleDescription(
            "Enter sends, Shift+Enter starts a new line, @ followed by a name mentions someone"
        )
        self._input.setToolTip("Enter sends · Shift+Enter: new line · @name mentions someone")
        self._input.setTabChangesFocus(True)
        line = self._input.fontMetrics().lineSpacing()
        self._input.setMaximumHeight(line * 3 + 12)
        self._input.setMinimumHeight(line + 12)
        self._input.textChanged.connect(self._on_input_changed)
        self._input.cursorPositionChanged.connect(self._update_completion)
        self._input.focus_lost.connect(self._hide_popup)
        self._input.set_override_check(self._input_overrides_shortcut)

        self._send = QPushButton("Send", self)
        self._send.setObjectName("chatSendButton")
        self._send.setAccessibleName("Send message")
        self._send.setToolTip("Send the message (Enter)")
        self._send.clicked.connect(self._submit)

        self._left = QLabel(self)
        self._left.setObjectName("chatLeft")
        self._left.setAccessibleName("Characters left")
        self._left.setToolTip(
            f"A message holds up to {MAX_MESSAGE_CHARS} characters and {MAX_MESSAGE_BYTES} bytes "
            "(an emoji takes 4 bytes)"
        )
        self._left.hide()

        self._error = QLabel(self)
        self._error.setObjectName("chatInputError")
        self._error.setAccessibleName("Message error")
        self._error.setStyleSheet(_ERROR_STYLE)
        self._error.setWordWrap(True)
        self._error.hide()

        self._popup = QListWidget(self)
        self._popup.setObjectName("chatCompletionPopup")
        self._popup.setAccessibleName("Name completions")
        self._popup.setToolTip("Tab or Enter inserts the name, Esc closes")
        self._popup.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self._popup.setUniformItemSizes(True)
        self._popup.itemClicked.connect(self._on_popup_clicked)
        self._popup.hide()

        editor_row = QHBoxLayout()
        editor_row.setContentsMargins(0, 0, 0, 0)
        editor_row.addWidget(self._input, 1)
        side = QVBoxLayout()
        side.setContentsMargins(0, 0, 0, 0)
        side.addStretch(1)
        side.addWidget(self._left, 0, Qt.AlignmentFlag.AlignRight)
        side.addWidget(self._send)
        editor_row.addLayout(side)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._tabs, 1)
        layout.addWidget(self._placeholder, 1)
        layout.addWidget(self._error)
        layout.addLayout(editor_row)

        context = Qt.ShortcutContext.WidgetWithChildrenShortcut
        previous = QShortcut(QKeySequence("Ctrl+PgUp"), self, context=context)
        previous.activated.connect(self._previous_conversation)
        following = QShortcut(QKeySequence("Ctrl+PgDown"), self, context=context)
        following.activated.connect(self._next_conversation)

        self._sync_input()
        self._sync_empty()

    # --- public API ---------------------------------------------------------------------------

    def set_own_name(self, name: str) -> None:
        """Our user name: our messages are not unread, ``@name`` mentions us."""
        self._own_name = name
        if self._completion is not None:
            self._update_completion()

    def set_colours(self, colours: Mapping[int, str]) -> None:
        """Channel id → "#rrggbb": each tab shows its channel's colour."""
        for channel_id, colour in colours.items():
            conv = self._conversations.get(channel_id)
            if conv is not None and conv.colour != colour:
                conv.colour = colour
                self._update_tab(conv)

    def tab_colour(self, channel_id: int) -> str:
        """The colour the channel's tab shows ("" for none)."""
        conv = self._conversations.get(channel_id)
        return "" if conv is None else conv.colour

    def set_channels(self, channels: Sequence[tuple[int, str]]) -> None:
        """The channels we are a member of, as (channel_id, name).

        New channels get a conversation; known ones are renamed if needed. A conversation whose
        channel is missing keeps its history but turns read-only with a note; it becomes
        writable again when the channel comes back.
        """
        before = self._current()
        was_writable = before is not None and before.joined
        present: set[int] = set()
        for channel_id, name in channels:
            present.add(channel_id)
            conv = self._conversations.get(channel_id)
            if conv is None:
                self._create_conversation(channel_id, name, joined=True)
                continue
            conv.name = name
            if not conv.joined:
                conv.joined = True
                self._append(conv, self._notice_entry("You are back in this channel."))
            self._update_tab(conv)
        for conv in self._conversations.values():
            if conv.channel_id not in present and conv.joined:
                conv.joined = False
                self._append(
                    conv,
                    self._notice_entry("You left this channel. Its history is kept, read-only."),
                )
                self._update_tab(conv)
        self._sync_empty()
        current = self._current()
        if current is before and (current is not None and current.joined) == was_writable:
            # Same conversation, still writable or not: leave what is being typed alone.
            self._sync_placeholder()
        else:
            self._save_draft()
            self._sync_input()

    def set_members(self, channel_id: int, names: Sequence[str]) -> None:
        """Who is in the channel: offered by ``@`` completion and highlighted as mentions."""
        self._members[channel_id] = tuple(names)
        if self._completion is not None:
            self._update_completion()

    def show_channel(self, channel_id: int) -> None:
        """Select the channel's conversation (and clear its unread count).

        Raises KeyError for a channel without a conversation.
        """
        conv = self._conversations.get(channel_id)
        if conv is None:
            raise KeyError(f"no conversation for channel {channel_id}")
        index = self._tabs.indexOf(conv.view)
        if self._tabs.currentIndex() == index:
            self._set_counts(conv, 0, 0)
        else:
            self._tabs.setCurrentIndex(index)

    def add_message(
        self, channel_id: int, author: str, text: str, sent_ms: int, *, own: bool = False
    ) -> None:
        """Append an opened message (arrival order). ``sent_ms`` is the sender's clock (Unix
        ms), shown only. ``own`` marks our own messages (also assumed when ``author`` is our
        name)."""
        conv = self._conversation_for(channel_id)
        from_us = own or (bool(self._own_name) and author == self._own_name)
        names = self._mention_names(channel_id)
        mentions_me = not from_us and mentions_user(text, self._own_name, names)
        previous = conv.entries[-1] if conv.entries else None
        grouped = (
            previous is not None
            and previous.kind == _MESSAGE
            and previous.author == author
            and previous.own == from_us
            and 0 <= sent_ms - previous.sent_ms <= GROUP_WINDOW_MS
        )
        entry = _Entry(
            kind=_MESSAGE,
            author=author,
            text=text,
            sent_ms=sent_ms,
            own=from_us,
            mentions_me=mentions_me,
            header=not grouped,
            names=names,
        )
        self._append(conv, entry)
        if not from_us and not self._attentive(conv):
            self._set_counts(conv, conv.unread + 1, conv.mentions + int(mentions_me))
        if mentions_me:
            self.mentioned.emit(channel_id, author, text)

    def message_sent(self, channel_id: int, text: str) -> None:
        """The connection sent ``text``: it no longer needs restoring."""
        conv = self._conversations.get(channel_id)
        if conv is not None and text in conv.unsent:
            conv.unsent.remove(text)

    def send_failed(self, channel_id: int, why: str) -> None:
        """Sending the oldest pending message of the channel failed: say so in the conversation
        and put the text back in its editor (after what is typed there now), so it is never
        lost silently."""
        conv = self._conversations.get(channel_id)
        self.add_notice(channel_id, f"not sent: {why}")
        if conv is None or not conv.unsent:
            return
        text = conv.unsent.popleft()
        if conv is self._current():
            current = self._input.toPlainText()
            self._input.setPlainText(f"{current}\n{text}" if current.strip() else text)
        else:
            conv.draft = f"{conv.draft}\n{text}" if conv.draft.strip() else text

    def add_notice(self, channel_id: int, text: str) -> None:
        """Append a system line ("Bob joined", "a message from X could not be verified"). Notices
        are not counted as unread."""
        self._append(self._conversation_for(channel_id), self._notice_entry(text))

    def unread(self, channel_id: int) -> int:
        """Messages from others that arrived while the conversation was not in view (0 for an
        unknown channel)."""
        conv = self._conversations.get(channel_id)
        return conv.unread if conv is not None else 0

    def mention_count(self, channel_id: int) -> int:
        """Unread messages that mention us (0 for an unknown channel)."""
        conv = self._conversations.get(channel_id)
        return conv.mentions if conv is not None else 0

    def current_channel(self) -> int | None:
        """The selected conversation's channel, or None."""
        conv = self._current()
        return conv.channel_id if conv is not None else None

    # --- conversations ------------------------------------------------------------------------

    def _create_conversation(self, channel_id: int, name: str, *, joined: bool) -> _Conversation:
        view = QTextBrowser(self._tabs)
        view.setObjectName(f"chatView-{channel_id}")
        view.setOpenExternalLinks(True)
        view.setOpenLinks(True)
        view.document().setUndoRedoEnabled(False)
        view.document().setDocumentMargin(6)
        view.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        conv = _Conversation(channel_id=channel_id, name=name, view=view, joined=joined)
        bar = view.verticalScrollBar()

        def on_scrolled(value: int) -> None:
            conv.stick_to_bottom = value >= bar.maximum() - 4

        def on_range(_minimum: int, maximum: int) -> None:
            if conv.stick_to_bottom:
                bar.setValue(maximum)

        bar.valueChanged.connect(on_scrolled)
        bar.rangeChanged.connect(on_range)
        self._conversations[channel_id] = conv
        self._tabs.addTab(view, "")
        self._update_tab(conv)
        return conv

    def _conversation_for(self, channel_id: int) -> _Conversation:
        conv = self._conversations.get(channel_id)
        if conv is None:
            # A line for a channel we are not (yet) shown as a member of: keep it rather than
            # lose it; set_channels makes the conversation writable when the channel arrives.
            log.debug("chat line for channel %d before set_channels named it", channel_id)
            conv = self._create_conversation(channel_id, f"channel {channel_id}", joined=False)
            self._sync_empty()
        return conv

    def _current(self) -> _Conversation | None:
        view = self._tabs.currentWidget()
        for conv in self._conversations.values():
            if conv.view is view:
                return conv
        return None

    def _attentive(self, conv: _Conversation) -> bool:
        """Whether the user can see ``conv`` now: selected, panel shown, window active."""
        return self._current() is conv and self.isVisible() and self.isActiveWindow()

    def _clear_if_attentive(self) -> None:
        conv = self._current()
        if conv is not None and self._attentive(conv):
            self._set_counts(conv, 0, 0)

    def _set_counts(self, conv: _Conversation, unread: int, mentions: int) -> None:
        if (conv.unread, conv.mentions) == (unread, mentions):
            return
        conv.unread, conv.mentions = unread, mentions
        self._update_tab(conv)
        self.unread_changed.emit(conv.channel_id, unread, mentions)

    def _update_tab(self, conv: _Conversation) -> None:
        index = self._tabs.indexOf(conv.view)
        if index < 0:
            return
        label = conv.name
        if not conv.joined:
            label += " (left)"
        if conv.unread:
            label += f" ({conv.unread})"
        if conv.mentions:
            label = f"@ {label}"
        # "&" marks a mnemonic in tab labels; channel names are shown literally.
        self._tabs.setTabText(index, label.replace("&", "&&"))
        self._tabs.setTabIcon(index, colour_swatch(conv.colour) if conv.colour else QIcon())
        if conv.mentions:
            color = _MENTION_TAB_COLOR
        elif not conv.joined:
            color = self.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
        else:
            color = QColor()  # the tab bar's own text colour
        self._tabs.tabBar().setTabTextColor(index, color)
        details = []
        if not conv.joined:
            details.append("you left this channel; read-only")
        if conv.unread:
            details.append(f"{conv.unread} unread")
        if conv.mentions:
            details.append(f"{conv.mentions} mentioning you")
        description = conv.name + (f": {', '.join(details)}" if details else "")
        self._tabs.setTabToolTip(index, description)
        self._tabs.tabBar().setAccessibleTabName(index, description)
        conv.view.setAccessibleName(f"Messages in {conv.name}")

    def _sync_empty(self) -> None:
        has_any = bool(self._conversations)
        self._tabs.setVisible(has_any)
        self._placeholder.setVisible(not has_any)

    @Slot(int)
    def _on_current_changed(self, _index: int) -> None:
        self._save_draft()
        conv = self._current()
        if conv is not None:
            self._set_counts(conv, 0, 0)
        self._sync_input()

    @Slot()
    def _previous_conversation(self) -> None:
        self._step_conversation(-1)

    @Slot()
    def _next_conversation(self) -> None:
        self._step_conversation(1)

    def _step_conversation(self, step: int) -> None:
        count = self._tabs.count()
        if count > 1:
            self._tabs.setCurrentIndex((self._tabs.currentIndex() + step) % count)

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.ActivationChange:
            self._clear_if_attentive()
        elif event.type() in (QEvent.Type.PaletteChange, QEvent.Type.StyleChange):
            for conv in self._conversations.values():
                self._update_tab(conv)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._clear_if_attentive()

    # --- history rendering --------------------------------------------------------------------

    def _notice_entry(self, text: str) -> _Entry:
        return _Entry(kind=_NOTICE, author="", text=text, sent_ms=int(self._clock() * 1000))

    def _mention_names(self, channel_id: int) -> frozenset[str]:
        names = set(self._members.get(channel_id, ()))
        if self._own_name:
            names.add(self._own_name)
        return frozenset(names)

    def _append(self, conv: _Conversation, entry: _Entry) -> None:
        document = conv.view.document()
        cursor = QTextCursor(document)
        cursor.movePosition(QTextCursor.MoveOperation.End)
        if conv.entries:
            first_block = document.blockCount()
            cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
        else:
            # The document's initial empty block becomes the first entry's.
            first_block = 0
            cursor.setBlockCharFormat(QTextCharFormat())
        cursor.insertHtml(self._entry_html(entry))
        entry.blocks = document.blockCount() - first_block
        self._format_blocks(conv, first_block, entry)
        conv.entries.append(entry)
        if len(conv.entries) > self._max_history:
            self._drop_oldest(conv)

    def _drop_oldest(self, conv: _Conversation) -> None:
        document = conv.view.document()
        oldest = conv.entries.popleft()
        successor = conv.entries[0]
        cursor = QTextCursor(document)
        cursor.setPosition(0)
        if successor.kind == _MESSAGE and not successor.header:
            # The successor continued the dropped message's group: re-render it with the header
            # (time and author) the group loses.
            successor.header = True
            last = document.findBlockByNumber(oldest.blocks + successor.blocks - 1)
            cursor.setPosition(last.position() + last.length() - 1, QTextCursor.MoveMode.KeepAnchor)
            cursor.removeSelectedText()
            cursor.setBlockCharFormat(QTextCharFormat())
            cursor.setCharFormat(QTextCharFormat())
            blocks_before = document.blockCount()
            cursor.insertHtml(self._entry_html(successor))
            successor.blocks = document.blockCount() - blocks_before + 1
        else:
            first = document.findBlockByNumber(oldest.blocks)
            cursor.setPosition(first.position(), QTextCursor.MoveMode.KeepAnchor)
            cursor.removeSelectedText()
        # Removing the separator merged the first blocks; give the successor its own format.
        self._format_blocks(conv, 0, successor)

    def _format_blocks(self, conv: _Conversation, first_block: int, entry: _Entry) -> None:
        document = conv.view.document()
        block_format = QTextBlockFormat()
        block_format.setTopMargin(8 if entry.header else 0)
        block_format.setBottomMargin(0)
        if entry.mentions_me:
            block_format.setBackground(_MENTION_BLOCK_BG)
        elif entry.own and entry.kind == _MESSAGE:
            tint = QColor(self.palette().color(QPalette.ColorRole.Highlight))
            tint.setAlpha(28)
            block_format.setBackground(tint)
        cursor = QTextCursor(document)
        cursor.setPosition(document.findBlockByNumber(first_block).position())
        last = document.findBlockByNumber(first_block + max(entry.blocks, 1) - 1)
        cursor.setPosition(last.position() + last.length() - 1, QTextCursor.MoveMode.KeepAnchor)
        cursor.setBlockFormat(block_format)

    def _dim_color(self) -> str:
        return self.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text).name()

    def _name_color(self, name: str) -> str:
        """A colour per name, the same every time (and for every case of the name), light
        enough on dark themes and dark enough on light ones."""
        hue = zlib.crc32(name.casefold().encode("utf-8")) % 360
        dark_theme = self.palette().color(QPalette.ColorRole.Base).lightness() < 128
        return QColor.fromHsl(hue, 170, 170 if dark_theme else 95).name()

    def _entry_html(self, entry: _Entry) -> str:
        hhmm, full = _format_time(entry.sent_ms)
        dim = self._dim_color()
        if entry.kind == _NOTICE:
            return (
                f'<span style="color:{dim}; font-style:italic" title="{_attr(full)}">'
                f"{hhmm} \u2014 {_escape(_clean(entry.text))}</span>"
            )
        parts: list[str] = []
        if entry.header:
            author = _clean(entry.author)
            parts.append(f'<span style="color:{dim}" title="{_attr(full)}">{hhmm}</span>&nbsp; ')
            parts.append(
                f'<span style="color:{self._name_color(author)}; font-weight:bold">'
                f"{_escape(author)}</span>"
            )
            if entry.own:
                parts.append(f' <span style="color:{dim}">(you)</span>')
            parts.append("<br>")
        parts.append(f'<span title="{_attr(full)}">{self._body_html(entry)}</span>')
        return "".join(parts)

    def _body_html(self, entry: _Entry) -> str:
        text = _clean(entry.text)
        spans: list[tuple[int, int, str]] = [(s, e, "url") for s, e in _find_urls(text)]
        me = self._own_name.casefold()
        for mention in find_mentions(text, entry.names):
            if any(s < mention.end and mention.start < e for s, e, _kind in spans):
                continue  # "@" inside a URL is part of the URL
            spans.append((mention.start, mention.end, mention.name))
        spans.sort()
        out: list[str] = []
        position = 0
        for start, end, kind in spans:
            out.append(_escape(text[position:start]))
            shown = _escape(text[start:end])
            if kind == "url":
                out.append(f'<a href="{_attr(text[start:end])}">{shown}</a>')
            elif kind == HERE or (me and kind.casefold() == me):
                out.append(
                    f'<span style="background-color:{_ME_BG}; color:{_ME_FG}; '
                    f'font-weight:bold">{shown}</span>'
                )
            else:
                out.append(
                    f'<span style="color:{self._name_color(kind)}; font-weight:bold">{shown}</span>'
                )
            position = end
        out.append(_escape(text[position:]))
        return "".join(out)

    # --- editor -------------------------------------------------------------------------------

    def _save_draft(self) -> None:
        if self._input_owner is None:
            return
        conv = self._conversations.get(self._input_owner)
        if conv is not None:
            conv.draft = self._input.toPlainText()

    def _sync_input(self) -> None:
        """Put the selected conversation's draft in the editor, or disable it (no channel, or a
        channel we left)."""
        conv = self._current()
        writable = conv is not None and conv.joined
        self._updating_input = True
        try:
            self._sync_placeholder()
            self._input.setPlainText(conv.draft if writable and conv is not None else "")
            self._input.moveCursor(QTextCursor.MoveOperation.End)
            self._input.setEnabled(writable)
            self._send.setEnabled(writable)
        finally:
            self._updating_input = False
        self._input_owner = conv.channel_id if writable and conv is not None else None
        self._error.hide()
        self._completion = None
        self._dismissed_at = None
        self._hide_popup()

    def _sync_placeholder(self) -> None:
        conv = self._current()
        if conv is None:
            text = "Join a channel to chat"
        elif not conv.joined:
            text = f"You left {conv.name}; its history is read-only until you rejoin"
        else:
            text = f"Message {conv.name} (Enter sends, Shift+Enter: new line, @ mentions)"
        self._input.setPlaceholderText(text)

    @Slot()
    def _on_input_changed(self) -> None:
        if self._updating_input:
            return
        text = self._input.toPlainText()
        self._show_room(text)
        why = too_long(text)
        if why is not None:
            self._show_error(f"Too long to send: {why}.")
        else:
            self._error.hide()
        self._update_completion()

    def _show_room(self, text: str) -> None:
        room = message_room(text)
        stripped = text.strip()
        used = max(
            len(stripped) / MAX_MESSAGE_CHARS, len(stripped.encode("utf-8")) / MAX_MESSAGE_BYTES
        )
        self._left.setVisible(used >= _COUNTER_FROM)
        self._left.setText(f"{room} left" if room >= 0 else f"{-room} over")
        self._left.setStyleSheet("" if room >= 0 else _ERROR_STYLE)

    def _show_error(self, message: str) -> None:
        self._error.setText(message)
        self._error.show()

    @Slot()
    def _submit(self) -> None:
        conv = self._current()
        if conv is None or not conv.joined:
            return
        text = self._input.toPlainText().strip()
        if not text:
            return
        why = too_long(text)
        if why is not None:  # kept in the editor: nothing is cleared that was not sent
            self._show_error(f"Not sent: the message has {why}. Shorten it or split it.")
            return
        self._error.hide()
        self._left.hide()
        conv.unsent.append(text)
        self._updating_input = True
        try:
            self._input.clear()
        finally:
            self._updating_input = False
        conv.draft = ""
        self._completion = None
        self._dismissed_at = None
        self._hide_popup()
        self.send_requested.emit(conv.channel_id, text)

    def _input_overrides_shortcut(self, event: QKeyEvent) -> bool:
        return event.key() == Qt.Key.Key_Escape and self._popup.isVisible()

    def _on_input_key(self, event: QKeyEvent) -> bool:
        """Keys the editor handles itself; True when handled."""
        key = event.key()
        modifiers = event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        plain = modifiers == Qt.KeyboardModifier.NoModifier
        enter = key in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if self._popup.isVisible():
            if key in (Qt.Key.Key_Up, Qt.Key.Key_Down) and plain:
                row = self._popup.currentRow() + (1 if key == Qt.Key.Key_Down else -1)
                self._popup.setCurrentRow(row % self._popup.count())
                return True
            if (key == Qt.Key.Key_Tab or enter) and plain:
                item = self._popup.currentItem() or self._popup.item(0)
                self._accept_completion(str(item.data(Qt.ItemDataRole.UserRole)))
                return True
            if key == Qt.Key.Key_Escape:
                self._dismissed_at = self._completion.start if self._completion else None
                self._hide_popup()
                return True
        if key == Qt.Key.Key_Tab and plain and self._completion is not None:
            self._accept_completion(self._completion.candidates[0])
            return True
        if enter:
            if modifiers & Qt.KeyboardModifier.ShiftModifier:
                self._input.insertPlainText("\n")
            else:
                self._submit()
            return True
        return False

    def _completion_names(self) -> list[str]:
        members = self._members.get(self._input_owner, ()) if self._input_owner is not None else ()
        return [name for name in members if name != self._own_name]

    @Slot()
    def _update_completion(self) -> None:
        if self._updating_input or self._input_owner is None:
            return
        text = self._input.toPlainText()
        cursor = _py_index(text, self._input.textCursor().position())
        completion = complete(text, cursor, self._completion_names())
        self._completion = completion
        if completion is None:
            self._dismissed_at = None
            self._hide_popup()
            return
        if completion.start == self._dismissed_at:
            return
        self._show_popup(completion)

    def _show_popup(self, completion: Completion) -> None:
        self._popup.clear()
        for name in completion.candidates:
            label = "@here \u2014 everyone in the channel" if name == HERE else f"@{name}"
            item = QListWidgetItem(label)
            item.setData(Qt.ItemDataRole.UserRole, name)
            self._popup.addItem(item)
        self._popup.setCurrentRow(0)
        frame = 2 * self._popup.frameWidth()
        rows = min(len(completion.candidates), _POPUP_ROWS)
        height = rows * max(self._popup.sizeHintForRow(0), 1) + frame
        width = self._popup.sizeHintForColumn(0) + frame + 24
        width = max(160, min(width, 360, self.width()))
        caret = self._input.viewport().mapTo(self, self._input.cursorRect().topLeft())
        top = self._input.mapTo(self, QPoint(0, 0)).y()
        x = max(0, min(caret.x(), self.width() - width))
        y = max(0, top - height)
        self._popup.setGeometry(x, y, width, min(height, top) if top > 0 else height)
        self._popup.raise_()
        self._popup.show()

    @Slot()
    def _hide_popup(self) -> None:
        self._popup.hide()

    @Slot(QListWidgetItem)
    def _on_popup_clicked(self, item: QListWidgetItem) -> None:
        self._accept_completion(str(item.data(Qt.ItemDataRole.UserRole)))
        self._input.setFocus(Qt.FocusReason.OtherFocusReason)

    def _accept_completion(self, choice: str) -> None:
        completion = self._completion
        if completion is None:
            return
        text = self._input.toPlainText()
        cursor_index = _py_index(text, self._input.textCursor().position())
        try:
            new_text, new_cursor = apply_completion(text, cursor_index, completion, choice)
        except ValueError:
            self._hide_popup()
            return
        replacement = new_text[completion.start : len(new_text) - (len(text) - completion.end)]
        self._updating_input = True
        try:
            cursor = self._input.textCursor()
            cursor.setPosition(_utf16_pos(text, completion.start))
            cursor.setPosition(_utf16_pos(text, completion.end), QTextCursor.MoveMode.KeepAnchor)
            cursor.insertText(replacement)
            cursor.setPosition(_utf16_pos(new_text, new_cursor))
            self._input.setTextCursor(cursor)
        finally:
            self._updating_input = False
        self._completion = None
        self._hide_popup()
        self._on_input_changed()
