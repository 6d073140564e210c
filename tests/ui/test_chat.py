"""ChatPanel on a real display: sending, completion, unread/mention counts, rendering, history."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PySide6.QtCore import QDateTime, QLocale, Qt
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor, QTextDocument
from PySide6.QtWidgets import (
    QLabel,
    QListWidget,
    QPlainTextEdit,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)
from pytestqt.qtbot import QtBot

from voipclient.ui.chat import MAX_HISTORY, MAX_MESSAGE_BYTES, MAX_MESSAGE_CHARS, ChatPanel

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

GENERAL, RAID = 1, 2
T0 = 1_700_000_000_000  # Unix ms
NOW_S = 1_700_000_100.0


@pytest.fixture
def panel(qtbot: QtBot) -> ChatPanel:
    chat = ChatPanel(clock=lambda: NOW_S)
    qtbot.addWidget(chat)
    chat.set_own_name("me")
    chat.set_channels([(GENERAL, "general"), (RAID, "raid")])
    chat.set_members(GENERAL, ["me", "alice", "bob", "mel"])
    chat.set_members(RAID, ["me", "albert", "alice"])
    chat.resize(640, 420)
    with qtbot.waitExposed(chat):
        chat.show()
    chat.activateWindow()
    qtbot.waitUntil(chat.isActiveWindow, timeout=5000)
    return chat


def editor(chat: ChatPanel) -> QPlainTextEdit:
    widget = chat.findChild(QPlainTextEdit, "chatInput")
    assert widget is not None
    return widget


def view(chat: ChatPanel, channel_id: int) -> QTextBrowser:
    widget = chat.findChild(QTextBrowser, f"chatView-{channel_id}")
    assert widget is not None
    return widget


def tabs(chat: ChatPanel) -> QTabWidget:
    widget = chat.findChild(QTabWidget, "chatTabs")
    assert widget is not None
    return widget


def popup(chat: ChatPanel) -> QListWidget:
    widget = chat.findChild(QListWidget, "chatCompletionPopup")
    assert widget is not None
    return widget


def tab_text(chat: ChatPanel, channel_id: int) -> str:
    return tabs(chat).tabText(tabs(chat).indexOf(view(chat, channel_id))).replace("&&", "&")


def fragments(document: QTextDocument) -> Iterator[tuple[str, QTextCharFormat]]:
    block = document.firstBlock()
    while block.isValid():
        iterator = block.begin()
        while not iterator.atEnd():
            fragment = iterator.fragment()
            yield fragment.text(), fragment.charFormat()
            iterator += 1
        block = block.next()


def fragment_format(document: QTextDocument, text: str) -> QTextCharFormat:
    for fragment_text, char_format in fragments(document):
        if fragment_text == text:
            return char_format
    raise AssertionError(f"no fragment {text!r} in {document.toPlainText()!r}")


def type_into(qtbot: QtBot, chat: ChatPanel, text: str) -> None:
    box = editor(chat)
    box.setFocus()
    qtbot.waitUntil(box.hasFocus)
    qtbot.keyClicks(box, text)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def __call__(self, *args: object) -> None:
        self.calls.append(args)


# --- sending -----------------------------------------------------------------------------------


def test_enter_sends_to_the_selected_channel(qtbot: QtBot, panel: ChatPanel) -> None:
    type_into(qtbot, panel, "hello there")
    with qtbot.wait_signal(panel.send_requested, timeout=2000) as blocker:
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    assert blocker.args == [GENERAL, "hello there"]
    assert editor(panel).toPlainText() == ""
    # the panel does not show the message itself; the app adds it with own=True
    assert "hello there" not in view(panel, GENERAL).toPlainText()


def test_send_button_and_keypad_enter(qtbot: QtBot, panel: ChatPanel) -> None:
    type_into(qtbot, panel, "one")
    with qtbot.wait_signal(panel.send_requested, timeout=2000) as blocker:
        qtbot.keyClick(editor(panel), Qt.Key.Key_Enter, Qt.KeyboardModifier.KeypadModifier)
    assert blocker.args == [GENERAL, "one"]
    type_into(qtbot, panel, "two")
    button = panel.findChild(QWidget, "chatSendButton")
    assert button is not None
    with qtbot.wait_signal(panel.send_requested, timeout=2000) as blocker:
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert blocker.args == [GENERAL, "two"]


def test_shift_enter_inserts_a_newline(qtbot: QtBot, panel: ChatPanel) -> None:
    type_into(qtbot, panel, "line one")
    with qtbot.assert_not_emitted(panel.send_requested):
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
        qtbot.keyClicks(editor(panel), "line two")
    assert editor(panel).toPlainText() == "line one\nline two"
    with qtbot.wait_signal(panel.send_requested, timeout=2000) as blocker:
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    assert blocker.args == [GENERAL, "line one\nline two"]


def test_blank_text_is_not_sent_and_text_is_trimmed(qtbot: QtBot, panel: ChatPanel) -> None:
    type_into(qtbot, panel, "   ")
    with qtbot.assert_not_emitted(panel.send_requested):
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    editor(panel).setPlainText("  hi  \n")
    with qtbot.wait_signal(panel.send_requested, timeout=2000) as blocker:
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    assert blocker.args == [GENERAL, "hi"]


def test_too_long_text_is_refused_with_an_inline_message(qtbot: QtBot, panel: ChatPanel) -> None:
    error = panel.findChild(QLabel, "chatInputError")
    assert error is not None
    assert error.isHidden()
    editor(panel).setFocus()
    editor(panel).setPlainText("x" * (MAX_MESSAGE_CHARS + 1))
    editor(panel).moveCursor(QTextCursor.MoveOperation.End)
    with qtbot.assert_not_emitted(panel.send_requested):
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    assert error.isVisible()
    assert str(MAX_MESSAGE_CHARS) in error.text()
    assert editor(panel).toPlainText() == "x" * (MAX_MESSAGE_CHARS + 1)  # kept for editing
    qtbot.keyClick(editor(panel), Qt.Key.Key_Backspace)
    assert error.isHidden()
    with qtbot.wait_signal(panel.send_requested, timeout=2000) as blocker:
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    assert blocker.args == [GENERAL, "x" * MAX_MESSAGE_CHARS]


def test_emoji_count_in_bytes_and_the_counter_says_what_is_left(
    qtbot: QtBot, panel: ChatPanel
) -> None:
    """1,500 emoji are under the 2,000-character limit but 6,000 bytes: refused, kept, and the
    counter says by how much; at the byte limit exactly it is sent."""
    left = panel.findChild(QLabel, "chatLeft")
    error = panel.findChild(QLabel, "chatInputError")
    assert left is not None and error is not None and left.isHidden()
    editor(panel).setFocus()
    editor(panel).setPlainText("🎮" * 1500)
    editor(panel).moveCursor(QTextCursor.MoveOperation.End)
    assert left.isVisible() and left.text() == f"{1500 * 4 - MAX_MESSAGE_BYTES} over"
    assert "6000 bytes" in error.text()
    with qtbot.assert_not_emitted(panel.send_requested):
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    assert editor(panel).toPlainText() == "🎮" * 1500  # nothing lost
    editor(panel).setPlainText("🎮" * (MAX_MESSAGE_BYTES // 4 - 5))
    assert left.isVisible() and left.text() == "20 left" and error.isHidden()
    editor(panel).setPlainText("🎮" * (MAX_MESSAGE_BYTES // 4))
    editor(panel).moveCursor(QTextCursor.MoveOperation.End)
    assert left.text() == "0 left"
    with qtbot.wait_signal(panel.send_requested, timeout=2000) as blocker:
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    assert blocker.args == [GENERAL, "🎮" * 1000]
    assert left.isHidden()
    editor(panel).setPlainText("short")
    assert left.isHidden()  # only near the limit


def test_a_message_that_could_not_be_sent_comes_back_to_the_editor(
    qtbot: QtBot, panel: ChatPanel
) -> None:
    type_into(qtbot, panel, "first")
    with qtbot.wait_signal(panel.send_requested, timeout=2000):
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    panel.message_sent(GENERAL, "first")
    type_into(qtbot, panel, "second")
    with qtbot.wait_signal(panel.send_requested, timeout=2000):
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    type_into(qtbot, panel, "typing on")
    panel.send_failed(GENERAL, "no sender key yet")
    assert editor(panel).toPlainText() == "typing on\nsecond"
    assert "not sent: no sender key yet" in view(panel, GENERAL).toPlainText()
    # a failure in a conversation not shown goes back to that conversation's draft
    panel.show_channel(RAID)
    type_into(qtbot, panel, "raid msg")
    with qtbot.wait_signal(panel.send_requested, timeout=2000):
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    panel.show_channel(GENERAL)
    panel.send_failed(RAID, "not connected")
    panel.show_channel(RAID)
    assert editor(panel).toPlainText() == "raid msg"


def test_each_conversation_keeps_its_draft(qtbot: QtBot, panel: ChatPanel) -> None:
    type_into(qtbot, panel, "draft for general")
    panel.show_channel(RAID)
    assert editor(panel).toPlainText() == ""
    type_into(qtbot, panel, "raid draft")
    with qtbot.wait_signal(panel.send_requested, timeout=2000) as blocker:
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    assert blocker.args == [RAID, "raid draft"]
    panel.show_channel(GENERAL)
    assert editor(panel).toPlainText() == "draft for general"


# --- completion --------------------------------------------------------------------------------


def test_tab_completes_a_mention(qtbot: QtBot, panel: ChatPanel) -> None:
    type_into(qtbot, panel, "hi @al")
    qtbot.waitUntil(popup(panel).isVisible)
    assert [popup(panel).item(i).text() for i in range(popup(panel).count())] == ["@alice"]
    qtbot.keyClick(editor(panel), Qt.Key.Key_Tab)
    assert editor(panel).toPlainText() == "hi @alice "
    assert editor(panel).textCursor().position() == len("hi @alice ")
    assert not popup(panel).isVisible()
    # Tab completed instead of moving the focus: the window's focus widget is still the editor
    # (hasFocus() would also need the window to stay the active one, which a loaded X server
    # without a window manager does not promise)
    assert panel.window().focusWidget() is editor(panel)


def test_enter_accepts_the_selected_completion_and_arrows_move(
    qtbot: QtBot, panel: ChatPanel
) -> None:
    panel.show_channel(RAID)
    type_into(qtbot, panel, "@al")
    qtbot.waitUntil(popup(panel).isVisible)
    items = [popup(panel).item(i).text() for i in range(popup(panel).count())]
    assert items == ["@albert", "@alice"]
    qtbot.keyClick(editor(panel), Qt.Key.Key_Down)
    with qtbot.assert_not_emitted(panel.send_requested):
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    assert editor(panel).toPlainText() == "@alice "
    qtbot.keyClicks(editor(panel), "go")
    with qtbot.wait_signal(panel.send_requested, timeout=2000) as blocker:
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    assert blocker.args == [RAID, "@alice go"]


def test_escape_closes_the_popup(qtbot: QtBot, panel: ChatPanel) -> None:
    type_into(qtbot, panel, "@b")
    qtbot.waitUntil(popup(panel).isVisible)
    qtbot.keyClick(editor(panel), Qt.Key.Key_Escape)
    assert not popup(panel).isVisible()
    qtbot.keyClicks(editor(panel), "o")  # stays closed for this word
    assert not popup(panel).isVisible()
    with qtbot.wait_signal(panel.send_requested, timeout=2000) as blocker:
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)
    assert blocker.args == [GENERAL, "@bo"]
    type_into(qtbot, panel, "@b")  # a new word opens it again
    qtbot.waitUntil(popup(panel).isVisible)


def test_completion_offers_here_but_not_own_name(qtbot: QtBot, panel: ChatPanel) -> None:
    type_into(qtbot, panel, "@e")
    qtbot.waitUntil(popup(panel).isVisible)
    names = [
        popup(panel).item(i).data(Qt.ItemDataRole.UserRole) for i in range(popup(panel).count())
    ]
    assert names == ["alice", "here", "mel"]  # all contain "e"; "me" is us, so not offered


def test_clicking_a_completion_inserts_it(qtbot: QtBot, panel: ChatPanel) -> None:
    type_into(qtbot, panel, "@m")
    qtbot.waitUntil(popup(panel).isVisible)
    list_view = popup(panel)
    rect = list_view.visualItemRect(list_view.item(0))
    qtbot.mouseClick(list_view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert editor(panel).toPlainText() == "@mel "


def test_completion_after_an_emoji(qtbot: QtBot, panel: ChatPanel) -> None:
    editor(panel).setFocus()
    editor(panel).setPlainText("😀 x @bo")
    editor(panel).moveCursor(QTextCursor.MoveOperation.End)
    qtbot.keyClick(editor(panel), Qt.Key.Key_Tab)
    assert editor(panel).toPlainText() == "😀 x @bob "


# --- unread and mentions -----------------------------------------------------------------------


def test_unread_counts_for_other_conversations(qtbot: QtBot, panel: ChatPanel) -> None:
    changes = Recorder()
    panel.unread_changed.connect(changes)
    panel.add_message(GENERAL, "alice", "seen right away", T0)
    assert panel.unread(GENERAL) == 0  # visible conversation, active window
    panel.add_message(RAID, "alice", "pull in 10", T0)
    panel.add_message(RAID, "albert", "ok", T0 + 1000)
    panel.add_message(RAID, "me", "mine", T0 + 2000, own=True)
    panel.add_message(RAID, "me", "mine from another device", T0 + 3000)
    panel.add_notice(RAID, "Bob joined")
    assert (panel.unread(RAID), panel.mention_count(RAID)) == (2, 0)
    assert changes.calls == [(RAID, 1, 0), (RAID, 2, 0)]
    assert tab_text(panel, RAID) == "raid (2)"
    assert tab_text(panel, GENERAL) == "general"

    with qtbot.wait_signal(panel.unread_changed, timeout=2000) as blocker:
        panel.add_message(RAID, "alice", "@me tank please", T0 + 4000)
    assert blocker.args == [RAID, 3, 1]
    assert panel.mention_count(RAID) == 1
    assert tab_text(panel, RAID) == "@ raid (3)"
    assert tabs(panel).tabBar().tabTextColor(tabs(panel).indexOf(view(panel, RAID))) != QColor()

    with qtbot.wait_signal(panel.unread_changed, timeout=2000) as blocker:
        panel.show_channel(RAID)
    assert blocker.args == [RAID, 0, 0]
    assert (panel.unread(RAID), panel.mention_count(RAID)) == (0, 0)
    assert tab_text(panel, RAID) == "raid"


def test_ctrl_page_keys_switch_and_clear(qtbot: QtBot, panel: ChatPanel) -> None:
    panel.add_message(RAID, "alice", "hey", T0)
    assert panel.unread(RAID) == 1
    editor(panel).setFocus()
    qtbot.waitUntil(editor(panel).hasFocus)
    with qtbot.wait_signal(panel.unread_changed, timeout=2000) as blocker:
        qtbot.keyClick(editor(panel), Qt.Key.Key_PageDown, Qt.KeyboardModifier.ControlModifier)
    assert blocker.args == [RAID, 0, 0]
    assert panel.current_channel() == RAID
    qtbot.keyClick(editor(panel), Qt.Key.Key_PageUp, Qt.KeyboardModifier.ControlModifier)
    assert panel.current_channel() == GENERAL
    qtbot.keyClick(editor(panel), Qt.Key.Key_PageUp, Qt.KeyboardModifier.ControlModifier)
    assert panel.current_channel() == RAID  # wraps around


def test_selected_conversation_counts_while_the_window_is_inactive(
    qtbot: QtBot, panel: ChatPanel
) -> None:
    other = QWidget()
    qtbot.addWidget(other)
    with qtbot.waitExposed(other):
        other.show()
    other.activateWindow()
    qtbot.waitUntil(lambda: not panel.isActiveWindow(), timeout=5000)
    panel.add_message(GENERAL, "bob", "anyone? @here", T0)
    assert (panel.unread(GENERAL), panel.mention_count(GENERAL)) == (1, 1)
    with qtbot.wait_signal(panel.unread_changed, timeout=5000) as blocker:
        panel.activateWindow()
    assert blocker.args == [GENERAL, 0, 0]


def test_hidden_panel_counts_and_showing_it_clears(qtbot: QtBot) -> None:
    # as in the app: the panel inside a window that stays active, hidden and shown again
    window = QWidget()
    qtbot.addWidget(window)
    chat = ChatPanel(window)
    QVBoxLayout(window).addWidget(chat)
    chat.set_channels([(GENERAL, "general")])
    with qtbot.waitExposed(window):
        window.show()
    window.activateWindow()
    qtbot.waitUntil(chat.isActiveWindow, timeout=5000)
    chat.hide()
    chat.add_message(GENERAL, "bob", "hello", T0)
    assert chat.unread(GENERAL) == 1
    with qtbot.wait_signal(chat.unread_changed, timeout=5000) as blocker:
        chat.show()
    assert blocker.args == [GENERAL, 0, 0]


def test_mentioned_fires_for_mentions_of_me_only(panel: ChatPanel) -> None:
    mentions = Recorder()
    panel.mentioned.connect(mentions)
    panel.add_message(GENERAL, "alice", "@me look", T0)
    panel.add_message(GENERAL, "bob", "everyone @here!", T0)
    panel.add_message(RAID, "albert", "hey @ME, ready?", T0)
    panel.add_message(GENERAL, "alice", "@mel only", T0)
    panel.add_message(GENERAL, "alice", "@melody and mail@me", T0)
    panel.add_message(GENERAL, "me", "talking about @me", T0, own=True)
    panel.add_message(GENERAL, "me", "@here from my other device", T0)
    assert mentions.calls == [
        (GENERAL, "alice", "@me look"),
        (GENERAL, "bob", "everyone @here!"),
        (RAID, "albert", "hey @ME, ready?"),
    ]


def test_mentioned_uses_own_name_set_later(panel: ChatPanel) -> None:
    mentions = Recorder()
    panel.mentioned.connect(mentions)
    panel.set_own_name("alice")
    panel.add_message(GENERAL, "me", "@alice hi", T0)
    assert mentions.calls == [(GENERAL, "me", "@alice hi")]


# --- rendering ---------------------------------------------------------------------------------


def test_user_text_is_shown_literally(panel: ChatPanel) -> None:
    evil = '<b>x</b><img src="p.png"> &amp; <a href="file:///etc">y</a> <script>alert(1)</script>'
    panel.add_message(GENERAL, "<i>mallory</i>", evil, T0)
    panel.add_notice(GENERAL, "<h1>notice</h1>")
    document = view(panel, GENERAL).document()
    text = document.toPlainText()
    assert evil in text
    assert "<i>mallory</i>" in text
    assert "<h1>notice</h1>" in text
    formats = [char_format for _text, char_format in fragments(document)]
    assert not any(f.isImageFormat() for f in formats)
    assert not any(f.isAnchor() for f in formats)
    assert not any(f.fontItalic() and "mallory" in t for t, f in fragments(document))
    assert "<img" not in view(panel, GENERAL).toHtml()


def test_control_characters_do_not_split_entries(panel: ChatPanel) -> None:
    panel.add_message(GENERAL, "alice", "a\u2029b\rc\x00d", T0)
    document = view(panel, GENERAL).document()
    assert document.blockCount() == 1
    assert "a\nb\nc\ufffdd" in document.toPlainText()


def test_only_http_links_are_clickable(panel: ChatPanel) -> None:
    browser = view(panel, GENERAL)
    assert browser.openExternalLinks()
    panel.add_message(
        GENERAL,
        "alice",
        "see https://example.org/wiki/A_(b). or HTTP://x.org/?q=1&r=2, not javascript:alert(1) "
        "file:///etc/passwd ftp://x.org",
        T0,
    )
    anchors = [(t, f.anchorHref()) for t, f in fragments(browser.document()) if f.isAnchor()]
    assert anchors == [
        ("https://example.org/wiki/A_(b)", "https://example.org/wiki/A_(b)"),
        ("HTTP://x.org/?q=1&r=2", "HTTP://x.org/?q=1&r=2"),
    ]


def test_timestamps_local_time_with_full_date_tooltip(panel: ChatPanel) -> None:
    panel.add_message(GENERAL, "alice", "hi", T0)
    when = QDateTime.fromMSecsSinceEpoch(T0).toLocalTime()
    hhmm = when.toString("HH:mm")
    document = view(panel, GENERAL).document()
    assert document.toPlainText().startswith(f"{hhmm}  alice\nhi")
    tooltip = fragment_format(document, hhmm).toolTip()
    assert tooltip == QLocale().toString(when, QLocale.FormatType.LongFormat)
    assert str(when.date().year()) in tooltip


def test_untrusted_timestamps_do_not_break_rendering(panel: ChatPanel) -> None:
    panel.add_message(GENERAL, "alice", "from the past", -5)
    panel.add_message(GENERAL, "bob", "from the far future", 2**70)
    text = view(panel, GENERAL).toPlainText()
    assert text.count("--:--") == 2
    assert "from the far future" in text


def test_messages_are_shown_in_arrival_order(panel: ChatPanel) -> None:
    panel.add_message(GENERAL, "alice", "first", T0 + 60_000)
    panel.add_message(GENERAL, "bob", "second", T0)
    text = view(panel, GENERAL).toPlainText()
    assert text.index("first") < text.index("second")


def test_author_colours_are_consistent(panel: ChatPanel) -> None:
    panel.add_message(GENERAL, "alice", "one", T0)
    panel.add_message(GENERAL, "bob", "two", T0)
    panel.add_message(RAID, "alice", "three", T0)
    general = fragment_format(view(panel, GENERAL).document(), "alice")
    raid = fragment_format(view(panel, RAID).document(), "alice")
    bob = fragment_format(view(panel, GENERAL).document(), "bob")
    assert general.foreground().color() == raid.foreground().color()
    assert general.foreground().color() != bob.foreground().color()
    assert general.fontWeight() > 400


def test_own_messages_are_marked(panel: ChatPanel) -> None:
    panel.add_message(GENERAL, "me", "mine", T0, own=True)
    panel.add_message(GENERAL, "alice", "theirs", T0 + 1000)
    document = view(panel, GENERAL).document()
    assert "me (you)\nmine" in document.toPlainText()
    own_block, other_block = document.firstBlock(), document.firstBlock().next()
    assert own_block.blockFormat().hasProperty(QTextCharFormat.Property.BackgroundBrush)
    assert not other_block.blockFormat().hasProperty(QTextCharFormat.Property.BackgroundBrush)


def test_mentions_are_highlighted_and_mine_stand_out(panel: ChatPanel) -> None:
    panel.add_message(GENERAL, "alice", "@me and @bob and @mel", T0)
    document = view(panel, GENERAL).document()
    mine = fragment_format(document, "@me")
    other = fragment_format(document, "@bob")
    assert mine.background().style() != Qt.BrushStyle.NoBrush
    assert other.background().style() == Qt.BrushStyle.NoBrush
    assert other.fontWeight() > 400
    assert fragment_format(document, "@mel").background().style() == Qt.BrushStyle.NoBrush
    assert document.firstBlock().blockFormat().background().style() != Qt.BrushStyle.NoBrush


def test_consecutive_messages_are_grouped_within_five_minutes(panel: ChatPanel) -> None:
    panel.add_message(GENERAL, "alice", "one", T0)
    panel.add_message(GENERAL, "alice", "two", T0 + 4 * 60_000)
    panel.add_message(GENERAL, "alice", "three", T0 + 10 * 60_000)
    panel.add_message(GENERAL, "bob", "four", T0 + 10 * 60_000)
    panel.add_notice(GENERAL, "carol joined")
    panel.add_message(GENERAL, "bob", "five", T0 + 10 * 60_000)
    lines = view(panel, GENERAL).toPlainText().split("\n")
    time_of = QDateTime.fromMSecsSinceEpoch
    t0 = time_of(T0).toLocalTime().toString("HH:mm")
    t10 = time_of(T0 + 10 * 60_000).toLocalTime().toString("HH:mm")
    notice_time = time_of(int(NOW_S * 1000)).toLocalTime().toString("HH:mm")
    assert lines == [
        f"{t0}  alice",
        "one",
        "two",
        f"{t10}  alice",
        "three",
        f"{t10}  bob",
        "four",
        f"{notice_time} \u2014 carol joined",
        f"{t10}  bob",
        "five",
    ]


def test_history_is_capped_and_the_oldest_dropped(panel: ChatPanel) -> None:
    for index in range(MAX_HISTORY + 5):
        panel.add_message(GENERAL, "alice" if index % 2 else "bob", f"message {index}", T0)
    document = view(panel, GENERAL).document()
    assert document.blockCount() == MAX_HISTORY
    text = document.toPlainText()
    assert "message 4\n" not in text
    assert "bob\nmessage 5\n" not in text
    assert text.split("\n")[1] == "message 5"
    assert text.endswith(f"message {MAX_HISTORY + 4}")


def test_capped_group_keeps_its_header(panel: ChatPanel) -> None:
    for index in range(MAX_HISTORY + 1):
        panel.add_message(GENERAL, "alice", f"message {index}", T0)
    document = view(panel, GENERAL).document()
    assert document.blockCount() == MAX_HISTORY
    hhmm = QDateTime.fromMSecsSinceEpoch(T0).toLocalTime().toString("HH:mm")
    assert document.toPlainText().startswith(f"{hhmm}  alice\nmessage 1\nmessage 2\n")
    assert document.firstBlock().blockFormat().topMargin() > 0


def test_view_follows_new_messages_unless_scrolled_up(qtbot: QtBot, panel: ChatPanel) -> None:
    bar = view(panel, GENERAL).verticalScrollBar()
    for index in range(60):
        panel.add_message(GENERAL, "alice", f"message {index}", T0 + index * 600_000)
    qtbot.waitUntil(lambda: bar.maximum() > 0)
    qtbot.waitUntil(lambda: bar.value() == bar.maximum())
    bar.setValue(0)
    longest = bar.maximum()
    panel.add_message(GENERAL, "bob", "new", T0)
    # the (lazy) layout of the new lines has grown the range: the moment the view would follow
    qtbot.waitUntil(lambda: bar.maximum() > longest)
    assert bar.value() == 0  # it stayed where the user put it


# --- conversations -----------------------------------------------------------------------------


def test_left_channel_is_read_only_and_comes_back(qtbot: QtBot, panel: ChatPanel) -> None:
    panel.add_message(RAID, "alice", "old message", T0)
    panel.show_channel(RAID)
    type_into(qtbot, panel, "unsent")
    panel.set_channels([(GENERAL, "general")])
    assert tab_text(panel, RAID) == "raid (left)"
    assert not editor(panel).isEnabled()
    assert editor(panel).toPlainText() == ""
    assert "left" in editor(panel).placeholderText()
    history = view(panel, RAID).toPlainText()
    assert "old message" in history
    assert "You left this channel" in history
    with qtbot.assert_not_emitted(panel.send_requested):
        qtbot.keyClick(editor(panel), Qt.Key.Key_Return)

    panel.show_channel(GENERAL)
    assert editor(panel).isEnabled()
    panel.set_channels([(GENERAL, "general"), (RAID, "raid night")])
    panel.show_channel(RAID)
    assert tab_text(panel, RAID) == "raid night"
    assert editor(panel).isEnabled()
    assert editor(panel).toPlainText() == "unsent"  # the draft survived
    assert "old message" in view(panel, RAID).toPlainText()


def test_input_disabled_without_channels(qtbot: QtBot) -> None:
    chat = ChatPanel()
    qtbot.addWidget(chat)
    chat.show()
    assert not editor(chat).isEnabled()
    assert editor(chat).placeholderText()
    chat.set_channels([(7, "lobby & bar")])
    assert editor(chat).isEnabled()
    assert chat.current_channel() == 7
    assert tab_text(chat, 7) == "lobby & bar"
    chat.set_channels([])
    assert not editor(chat).isEnabled()


def test_line_for_unknown_channel_is_kept(panel: ChatPanel) -> None:
    panel.add_message(9, "zed", "early bird", T0)
    assert "early bird" in view(panel, 9).toPlainText()
    panel.set_channels([(GENERAL, "general"), (RAID, "raid"), (9, "late")])
    assert tab_text(panel, 9).startswith("late")


def test_show_unknown_channel_raises(panel: ChatPanel) -> None:
    with pytest.raises(KeyError):
        panel.show_channel(42)
    assert panel.unread(42) == 0
    assert panel.mention_count(42) == 0


def test_controls_have_accessible_names_and_tooltips(panel: ChatPanel) -> None:
    for name in ("chatTabs", "chatInput", "chatSendButton", "chatCompletionPopup"):
        widget = panel.findChild(QWidget, name)
        assert widget is not None
        assert widget.accessibleName()
        assert widget.toolTip()
    assert view(panel, GENERAL).accessibleName() == "Messages in general"
    panel.add_message(RAID, "alice", "@me", T0)
    assert "1 mentioning you" in tabs(panel).tabToolTip(tabs(panel).indexOf(view(panel, RAID)))


def test_roster_updates_leave_typing_alone(qtbot: QtBot, panel: ChatPanel) -> None:
    type_into(qtbot, panel, "hello @al")
    qtbot.waitUntil(popup(panel).isVisible)
    editor(panel).moveCursor(QTextCursor.MoveOperation.Left)
    position = editor(panel).textCursor().position()
    panel.set_channels([(GENERAL, "general chat"), (RAID, "raid"), (3, "new")])
    assert editor(panel).toPlainText() == "hello @al"
    assert editor(panel).textCursor().position() == position
    assert "general chat" in editor(panel).placeholderText()
