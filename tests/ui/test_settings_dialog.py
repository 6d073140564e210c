"""SettingsDialog and AudioTester on the real X display and the PulseAudio null sinks.

Devices: ALSA PCMs per null sink / monitor (as in tests/integration/audio/test_sd_engine.py), so
the dialog lists them by name. Sound that comes out is recorded from a sink's monitor with
``parec`` and checked for the 440 Hz test tone. An idle null sink starts playing up to ~2 s after a
stream starts, so the waits allow for that.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractButton,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QListWidget,
    QPushButton,
    QRadioButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QWidget,
)

from voipclient.audio.sd_engine import list_devices, refresh_devices
from voipclient.errors import AudioDeviceError
from voipclient.ui.audio_test import AudioTester, make_tone
from voipclient.ui.prefs import (
    AudioPrefs,
    BindingPref,
    Preferences,
    ServerPrefs,
    TransmitPrefs,
)
from voipclient.ui.settings_dialog import (
    BindingEditor,
    LevelMeter,
    SettingsDialog,
    find_conflicts,
)

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

RATE = 48_000
SERVER = "voice.example:4000"
CHANNELS = ["Lobby", "Squad", "Command"]
AUDIO_WAIT_MS = 10_000  # an idle null sink may take ~2 s to start; the tone itself is 1 s


# -- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
def null_sink_pcms() -> Iterator[None]:
    """ALSA PCMs for both null sinks and their monitors, then PortAudio re-reads its list."""
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "alsa" / "asoundrc"
    path.parent.mkdir(parents=True, exist_ok=True)
    pcms = {
        "voip_vsink": "vsink",
        "voip_vsink_monitor": "vsink.monitor",
        "voip_vsink2": "vsink2",
        "voip_vsink2_monitor": "vsink2.monitor",
    }
    path.write_text(
        "".join(f'pcm.{name} {{ type pulse; device "{dev}" }}\n' for name, dev in pcms.items())
    )
    assert refresh_devices(), "a stream of an earlier test was left open"
    yield
    path.unlink(missing_ok=True)
    assert refresh_devices(), "a test left a stream open"


class Recorder:
    """``parec`` on a sink's monitor: raw 48 kHz mono s16 until stopped, read as it comes (so a
    test can wait for what it needs to have heard instead of sleeping)."""

    def __init__(self, source: str) -> None:
        self.proc = subprocess.Popen(
            [
                "parec",
                f"--device={source}",
                "--format=s16le",
                "--rate=48000",
                "--channels=1",
                "--raw",
                "--latency-msec=20",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, name="parec-reader", daemon=True)
        self._reader.start()
        self._wait_recording()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            self._chunks.append(chunk)

    def samples(self) -> npt.NDArray[np.float64]:
        """What was recorded so far, full scale 1.0."""
        out = b"".join(list(self._chunks))
        return np.frombuffer(out[: len(out) // 2 * 2], dtype="<i2").astype(np.float64) / 32768

    def heard_the_end(self, quiet_s: float = 0.1) -> bool:
        """Sound was recorded, then ``quiet_s`` of silence: a sound that has ended came through
        the sound server whole (what a fixed wait after its end used to hope for)."""
        x = self.samples()
        loud = np.flatnonzero(np.abs(x) > 0.01)
        return loud.size > 0 and x.size - 1 - int(loud[-1]) >= quiet_s * RATE

    def _wait_recording(self) -> None:
        """Return once the sound server lists this recording: a slow start (a busy machine)
        must not cut off the beginning of what the test plays next."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and self.proc.poll() is None:
            if str(self.proc.pid) in _source_output_pids():
                return
            time.sleep(0.02)

    def stop(self) -> npt.NDArray[np.float64]:
        self.proc.terminate()
        self._reader.join(10)  # reads to the end of the pipe
        _out, err = self.proc.communicate(timeout=10)
        assert self.proc.returncode in (0, -15), err
        return self.samples()


def _source_output_pids() -> list[str]:
    """``application.process.id`` of every recording stream the sound server has."""
    listing = subprocess.run(
        ["pactl", "list", "source-outputs"], capture_output=True, text=True, timeout=5, check=False
    )
    return [
        line.split("=", 1)[1].strip().strip('"')
        for line in listing.stdout.splitlines()
        if "application.process.id" in line
    ]


def tone_analysis(x: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    """(peak dBFS, dominant frequency Hz, share of power within ±20 Hz of it) of the loud part."""
    loud = np.flatnonzero(np.abs(x) > 0.01)
    assert loud.size > RATE // 4, f"no sound recorded ({loud.size} loud samples)"
    seg = x[loud[0] : loud[-1] + 1]
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.size))) ** 2
    freqs = np.fft.rfftfreq(seg.size, 1 / RATE)
    peak_hz = float(freqs[int(np.argmax(spectrum))])
    band = spectrum[np.abs(freqs - peak_hz) <= 20].sum() / spectrum.sum()
    return 20 * math.log10(float(np.max(np.abs(seg)))), peak_hz, float(band)


def base_prefs() -> Preferences:
    return Preferences(
        servers={
            SERVER: ServerPrefs(
                bindings=(
                    BindingPref("f13", ("Lobby",)),
                    BindingPref("ctrl+f13", ("Squad", "Command")),
                    BindingPref("mouse4", ("Command",), latching=True),
                ),
                hot_mic="Lobby",
                channel_volumes={"Lobby": 0.5},
            )
        }
    )


def make_dialog(qtbot: Any, prefs: Preferences | None = None, **kwargs: Any) -> SettingsDialog:
    kwargs.setdefault("server_key", SERVER)
    kwargs.setdefault("channels", CHANNELS)
    dialog = SettingsDialog(prefs or base_prefs(), **kwargs)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    return dialog


def find(dialog: QWidget, kind: type, name: str) -> Any:
    widget = dialog.findChild(kind, name)
    assert widget is not None, f"no {kind.__name__} named {name!r}"
    return widget


def button(dialog: QDialog, role: QDialogButtonBox.StandardButton) -> QPushButton:
    box = find(dialog, QDialogButtonBox, "buttonBox")
    return box.button(role)


APPLY = QDialogButtonBox.StandardButton.Apply
OK = QDialogButtonBox.StandardButton.Ok
CANCEL = QDialogButtonBox.StandardButton.Cancel


# -- preferences in, preferences out -------------------------------------------------------------


def test_unchanged_dialog_returns_the_same_preferences(qtbot: Any) -> None:
    prefs = base_prefs()
    dialog = make_dialog(qtbot, prefs)
    assert dialog.preferences() == prefs
    assert not button(dialog, APPLY).isEnabled()
    # A server never edited gets no entry just by opening the dialog.
    other = make_dialog(qtbot, prefs, server_key="new.example:1")
    assert other.preferences() == prefs


def test_apply_emits_the_edited_preferences(qtbot: Any) -> None:
    dialog = make_dialog(qtbot)
    find(dialog, QComboBox, "frameSize").setCurrentIndex(
        find(dialog, QComboBox, "frameSize").findData(10)
    )
    find(dialog, QSpinBox, "bitrateSpin").setValue(64)
    assert find(dialog, QSlider, "bitrateSlider").value() == 64
    find(dialog, QSpinBox, "jitterMax").setValue(300)
    ns = find(dialog, QComboBox, "noiseSuppression")
    ns.setCurrentIndex(ns.findData("speex"))
    agc = find(dialog, QAbstractButton, "agc")
    qtbot.mouseClick(agc, Qt.MouseButton.LeftButton, pos=QPoint(8, agc.height() // 2))
    assert not agc.isChecked()
    find(dialog, QAbstractButton, "cues").setChecked(False)
    find(dialog, QRadioButton, "modeVoiceActivation").setChecked(True)
    hot_mic = find(dialog, QComboBox, "hotMic")
    hot_mic.setCurrentIndex(hot_mic.findData("Squad"))
    find(dialog, QSlider, "vadThreshold").setValue(70)
    find(dialog, QSpinBox, "releaseDelay").setValue(500)
    theme = find(dialog, QComboBox, "theme")
    theme.setCurrentIndex(theme.findData("light"))
    find(dialog, QAbstractButton, "closeToTray").setChecked(True)
    find(dialog, QAbstractButton, "notifyMentions").setChecked(False)

    base = base_prefs()
    expected = replace(
        base,
        audio=AudioPrefs(
            frame_ms=10,
            bitrate=64_000,
            jitter_max_ms=300,
            noise_suppression="speex",
            agc=False,
            cues=False,
        ),
        transmit=TransmitPrefs(mode="voice_activation", vad_threshold=0.7, release_ms=500),
        theme="light",
        close_to_tray=True,
        notify_mentions=False,
    ).with_server(SERVER, replace(base.server(SERVER), hot_mic="Squad"))
    assert dialog.preferences() == expected
    apply = button(dialog, APPLY)
    assert apply.isEnabled()
    with qtbot.waitSignal(dialog.applied, timeout=1000) as blocker:
        qtbot.mouseClick(apply, Qt.MouseButton.LeftButton)
    assert blocker.args == [expected]
    assert dialog.isVisible() and not apply.isEnabled()  # nothing new to apply
    # Volumes and other per-server state the dialog does not edit are kept.
    assert blocker.args[0].server(SERVER).channel_volumes == {"Lobby": 0.5}

    # OK applies the latest state and closes.
    find(dialog, QSpinBox, "releaseDelay").setValue(250)
    with qtbot.waitSignal(dialog.applied, timeout=1000) as blocker:
        qtbot.mouseClick(button(dialog, OK), Qt.MouseButton.LeftButton)
    assert blocker.args[0].transmit.release_ms == 250
    assert dialog.result() == QDialog.DialogCode.Accepted and not dialog.isVisible()


def test_cancel_emits_nothing(qtbot: Any) -> None:
    dialog = make_dialog(qtbot)
    emitted: list[object] = []
    dialog.applied.connect(emitted.append)
    find(dialog, QSpinBox, "jitterMax").setValue(900)
    find(dialog, QAbstractButton, "highpass").setChecked(False)
    qtbot.mouseClick(button(dialog, CANCEL), Qt.MouseButton.LeftButton)
    assert dialog.result() == QDialog.DialogCode.Rejected and not dialog.isVisible()
    assert emitted == []
    # Esc is Cancel too.
    dialog = make_dialog(qtbot)
    dialog.applied.connect(emitted.append)
    find(dialog, QSpinBox, "jitterMax").setValue(900)
    qtbot.keyClick(dialog, Qt.Key.Key_Escape)
    assert not dialog.isVisible() and emitted == []


def test_values_are_kept_exactly_unless_edited(qtbot: Any) -> None:
    prefs = replace(
        base_prefs(),
        audio=AudioPrefs(bitrate=32_500),
        transmit=TransmitPrefs(vad_threshold=0.555),
    )
    dialog = make_dialog(qtbot, prefs)
    assert dialog.preferences() == prefs  # the kb/s and percent widgets do not round them
    find(dialog, QSlider, "vadThreshold").setValue(20)
    assert dialog.preferences().transmit.vad_threshold == 0.2


# -- pages and their controls ------------------------------------------------------------------


def test_pages_are_listed_on_the_left(qtbot: Any) -> None:
    dialog = make_dialog(qtbot)
    pages = find(dialog, QListWidget, "pageList")
    assert [pages.item(i).text() for i in range(pages.count())] == [
        "Audio",
        "Transmission",
        "Hotkeys",
        "Appearance",
    ]
    stack = dialog.pages
    pages.setCurrentRow(2)
    assert stack.currentWidget().objectName() == "hotkeysPage"
    pages.setCurrentRow(3)
    assert stack.currentWidget().objectName() == "appearancePage"


def test_every_control_has_a_tooltip_and_an_accessible_name(qtbot: Any) -> None:
    dialog = make_dialog(qtbot)
    kinds = (QAbstractButton, QComboBox, QSpinBox, QSlider, QListWidget, QTableWidget, LevelMeter)
    controls = [w for kind in kinds for w in dialog.findChildren(kind)]
    assert len(controls) > 25
    for widget in controls:
        if widget.parent() is not None and isinstance(widget.parent(), QAbstractButton | QComboBox):
            continue  # the inner parts of a composite widget
        if widget.objectName().startswith("qt_"):
            continue  # Qt's own parts (scroll bar buttons, ...)
        assert widget.objectName(), widget
        assert widget.toolTip(), widget.objectName()
        assert widget.accessibleName(), widget.objectName()


def test_tab_order_follows_the_page(qtbot: Any) -> None:
    dialog = make_dialog(qtbot)
    dialog.activateWindow()
    qtbot.waitActive(dialog)
    order = ["inputDevice", "outputDevice", "playTone", "testMicrophone", "frameSize"]
    find(dialog, QComboBox, order[0]).setFocus()
    for name in order[1:]:
        qtbot.keyClick(dialog.focusWidget(), Qt.Key.Key_Tab)
        assert dialog.focusWidget().objectName() == name


def test_threshold_mark_and_input_level(qtbot: Any) -> None:
    dialog = make_dialog(qtbot)
    meter = find(dialog, LevelMeter, "inputMeter")
    threshold = find(dialog, QSlider, "vadThreshold")
    assert not threshold.isEnabled()  # push-to-talk only: no threshold to set
    find(dialog, QRadioButton, "modeVoiceActivation").setChecked(True)
    assert threshold.isEnabled()
    threshold.setValue(80)
    assert meter.mark() == pytest.approx(0.8)
    dialog.set_input_level(-12.0, True)
    assert meter.level() == -12.0 and meter.active()
    assert meter.fraction() == pytest.approx(0.8)
    dialog.set_input_level(-80.0, False)
    assert meter.fraction() == 0.0 and not meter.active()
    meter.grab()  # paints without errors


def test_hot_mic_note_when_no_channel(qtbot: Any) -> None:
    prefs = base_prefs().with_server(SERVER, ServerPrefs(hot_mic="Gone"))
    dialog = make_dialog(qtbot, prefs)
    hot_mic = find(dialog, QComboBox, "hotMic")
    assert hot_mic.currentText() == "Gone (not on this server)"
    hot_mic.setCurrentIndex(0)  # None
    find(dialog, QRadioButton, "modeContinuous").setChecked(True)
    note = find(dialog, QLabel, "transmitNote")
    assert not note.isHidden() and "Choose a hot-mic channel" in note.text()
    find(dialog, QRadioButton, "modePtt").setChecked(True)
    assert note.isHidden()


# -- hotkeys ---------------------------------------------------------------------------------------


def table_rows(table: QTableWidget) -> list[tuple[str, str, str]]:
    return [
        (table.item(r, 0).text(), table.item(r, 1).text(), table.item(r, 2).text())
        for r in range(table.rowCount())
    ]


def test_find_conflicts() -> None:
    assert find_conflicts(["f13", "mouse4", "ctrl+f14"]) == []
    [same] = find_conflicts(["f13", "mouse4", "F13"])
    assert same.rows == (0, 2) and "same hotkey" in same.message
    [side] = find_conflicts(["ctrl_l+t", "ctrl+t"])  # left Ctrl + T completes both
    assert side.rows == (0, 1) and "part of" in side.message
    [subset] = find_conflicts(["ctrl+shift+f13", "shift+f13"])
    assert subset.rows == (0, 1)
    assert subset.message.startswith("shift+f13 (row 2) is part of ctrl+shift+f13 (row 1)")
    [bad] = find_conflicts(["f99"])
    assert bad.rows == (0,) and "not a valid hotkey" in bad.message


def test_hotkeys_table_lists_bindings_and_shows_conflicts(qtbot: Any) -> None:
    dialog = make_dialog(qtbot)
    table = find(dialog, QTableWidget, "bindingsTable")
    assert table_rows(table) == [
        ("f13", "Lobby", "Hold to talk"),
        ("ctrl+f13", "Squad, Command", "Hold to talk"),
        ("mouse4", "Command", "Latching"),
    ]
    warning = find(dialog, QLabel, "hotkeyWarning")
    assert not warning.isHidden()
    assert "f13 (row 1) is part of ctrl+f13 (row 2)" in warning.text()
    tinted = table.item(0, 0).background().color()
    assert tinted.alpha() > 0 and table.item(1, 0).background().color() == tinted
    assert table.item(2, 0).background().style() == Qt.BrushStyle.NoBrush
    assert "part of" in table.item(0, 1).toolTip()

    # Remove the smaller chord: the conflict goes away.
    table.selectRow(0)
    qtbot.mouseClick(find(dialog, QPushButton, "removeBinding"), Qt.MouseButton.LeftButton)
    assert [r[0] for r in table_rows(table)] == ["ctrl+f13", "mouse4"]
    assert warning.isHidden()
    assert table.item(0, 0).background().style() == Qt.BrushStyle.NoBrush


def open_editor(qtbot: Any, dialog: SettingsDialog, button_name: str) -> BindingEditor:
    qtbot.mouseClick(find(dialog, QPushButton, button_name), Qt.MouseButton.LeftButton)
    editor = dialog.editor
    assert editor is not None and editor.isVisible() and editor.objectName() == "bindingEditor"
    return editor


def tick(editor: BindingEditor, channel: str, on: bool = True) -> None:
    items = editor.channel_list.findItems(channel, Qt.MatchFlag.MatchStartsWith)
    items[0].setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)


def test_add_and_edit_a_binding(qtbot: Any) -> None:
    dialog = make_dialog(qtbot)
    table = find(dialog, QTableWidget, "bindingsTable")
    editor = open_editor(qtbot, dialog, "addBinding")
    ok = editor.buttons.button(QDialogButtonBox.StandardButton.Ok)
    assert editor.capture.is_capturing()  # Add goes straight to "press a key"
    assert not ok.isEnabled()
    qtbot.keyPress(editor.capture, Qt.Key.Key_Control)
    qtbot.keyPress(editor.capture, Qt.Key.Key_F13)
    qtbot.keyRelease(editor.capture, Qt.Key.Key_F13)
    qtbot.keyRelease(editor.capture, Qt.Key.Key_Control)
    assert editor.capture.keys() == "ctrl+f13"
    # ctrl+f13 is row 2's already: the one rule refuses it, naming the channels that have it
    assert "already the push-to-talk key of Squad, Command" in editor.warning.text()
    assert not ok.isEnabled()
    tick(editor, "Lobby")
    assert not ok.isEnabled()
    editor.capture.set_keys("mouse5")
    editor.capture.captured.emit("mouse5")
    assert "already" not in editor.warning.text()
    assert ok.isEnabled()
    qtbot.mouseClick(ok, Qt.MouseButton.LeftButton)
    assert table_rows(table)[-1] == ("mouse5", "Lobby", "Hold to talk")

    # Edit the latching side button: more channels, hold to talk.
    table.selectRow(2)
    editor = open_editor(qtbot, dialog, "editBinding")
    assert not editor.capture.is_capturing() and editor.capture.keys() == "mouse4"
    assert editor.latching.isChecked()
    tick(editor, "Squad")
    editor.latching.setChecked(False)
    qtbot.mouseClick(
        editor.buttons.button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton
    )
    assert table_rows(table)[2] == ("mouse4", "Squad, Command", "Hold to talk")

    # A cancelled edit changes nothing.
    editor = open_editor(qtbot, dialog, "editBinding")
    tick(editor, "Lobby")
    qtbot.mouseClick(
        editor.buttons.button(QDialogButtonBox.StandardButton.Cancel), Qt.MouseButton.LeftButton
    )
    assert table_rows(table)[2] == ("mouse4", "Squad, Command", "Hold to talk")
    assert dialog.editor is None

    with qtbot.waitSignal(dialog.applied, timeout=1000) as blocker:
        qtbot.mouseClick(button(dialog, APPLY), Qt.MouseButton.LeftButton)
    assert blocker.args[0].server(SERVER).bindings == (
        BindingPref("f13", ("Lobby",)),
        BindingPref("ctrl+f13", ("Squad", "Command")),
        BindingPref("mouse4", ("Squad", "Command")),
        BindingPref("mouse5", ("Lobby",)),
    )


def test_a_part_chord_is_warned_about_in_the_editor_and_kept(qtbot: Any) -> None:
    dialog = make_dialog(qtbot)
    editor = open_editor(qtbot, dialog, "addBinding")
    editor.capture.set_keys("shift+mouse4")
    editor.capture.captured.emit("shift+mouse4")
    tick(editor, "Lobby")
    assert "mouse4 (Command) is part of shift+mouse4" in editor.warning.text()
    assert editor.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()


def test_settings_with_the_same_hotkey_twice_are_never_applied(qtbot: Any) -> None:
    """Settings loaded with a duplicate (an old version, a hand-edited file) show it and
    refuse Apply/OK until one is changed: the window never shows a key on two channels."""
    prefs = base_prefs()
    server = prefs.server(SERVER)
    dup = replace(server, bindings=(*server.bindings, BindingPref("F13", ("Squad",))))
    dialog = make_dialog(qtbot, prefs.with_server(SERVER, dup))
    applied: list[object] = []
    dialog.applied.connect(applied.append)
    qtbot.mouseClick(button(dialog, OK), Qt.MouseButton.LeftButton)
    assert applied == [] and dialog.isVisible()
    warning = find(dialog, QLabel, "hotkeyWarning")
    assert "use the same hotkey" in warning.text() and "change or remove one first" in (
        warning.text()
    )
    assert find(dialog, QListWidget, "pageList").currentRow() == 2  # shown where to fix it
    table = find(dialog, QTableWidget, "bindingsTable")
    table.selectRow(3)
    qtbot.mouseClick(find(dialog, QPushButton, "removeBinding"), Qt.MouseButton.LeftButton)
    qtbot.mouseClick(button(dialog, OK), Qt.MouseButton.LeftButton)
    assert len(applied) == 1 and not dialog.isVisible()


def test_every_mnemonic_label_has_a_buddy(qtbot: Any) -> None:
    """A "&" label without a buddy shows the "&" itself ("&Bitrate:" did)."""
    dialog = make_dialog(qtbot)
    labels = [
        w for w in dialog.findChildren(QLabel) if "&" in w.text() and not w.openExternalLinks()
    ]
    assert labels, "the dialog has mnemonic labels"
    for label in labels:
        if label.textFormat() == Qt.TextFormat.RichText or "&amp;" in label.text():
            continue
        assert label.buddy() is not None, label.text()


def test_hotkeys_page_disabled_when_not_connected(qtbot: Any) -> None:
    dialog = make_dialog(qtbot, base_prefs(), server_key=None, channels=[])
    find(dialog, QListWidget, "pageList").setCurrentRow(2)
    note = find(dialog, QLabel, "hotkeysDisabled")
    assert note.isVisible() and "Connect to a server" in note.text()
    for name in ("bindingsTable", "addBinding", "editBinding", "removeBinding"):
        widget = find(dialog, QWidget, name)
        assert not widget.isEnabled()
        assert "Connect to a server" in widget.toolTip()
    assert not find(dialog, QComboBox, "hotMic").isEnabled()
    find(dialog, QRadioButton, "modeContinuous").setChecked(True)
    assert "Connect to a server" in find(dialog, QLabel, "transmitNote").text()
    with qtbot.waitSignal(dialog.applied, timeout=1000) as blocker:
        qtbot.mouseClick(button(dialog, OK), Qt.MouseButton.LeftButton)
    assert blocker.args[0].servers == base_prefs().servers  # per-server state untouched
    assert blocker.args[0].transmit.mode == "continuous"


# -- noise suppression and devices -----------------------------------------------------------------


def test_unavailable_noise_suppression_is_disabled_with_its_reason(
    qtbot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Make the Speex library unimportable, as on a machine without it.
    monkeypatch.delitem(sys.modules, "voipclient.audio.ns_speex", raising=False)
    monkeypatch.setitem(sys.modules, "speexdsp_ns", None)
    prefs = replace(base_prefs(), audio=AudioPrefs(noise_suppression="speex"))
    dialog = make_dialog(qtbot, prefs)
    combo = find(dialog, QComboBox, "noiseSuppression")
    model = combo.model()
    assert isinstance(model, QStandardItemModel)
    speex = model.item(combo.findData("speex"))
    assert not speex.isEnabled()
    assert "unavailable" in speex.text()
    assert "pip install speexdsp-ns-vulcanlabs" in speex.toolTip()
    for name in ("off", "webrtc", "rnnoise"):
        assert model.item(combo.findData(name)).isEnabled(), name
    status = find(dialog, QLabel, "noiseSuppressionStatus")
    assert "cannot run here" in status.text() and "speexdsp" in status.text()
    combo.setCurrentIndex(combo.findData("webrtc"))
    assert "Not installed: Speex" in status.text()


def test_devices_are_listed_by_name(qtbot: Any, null_sink_pcms: None) -> None:
    prefs = replace(
        base_prefs(), audio=AudioPrefs(input_device="voip_vsink_monitor", output_device="gone")
    )
    dialog = make_dialog(qtbot, prefs)
    inputs = find(dialog, QComboBox, "inputDevice")
    outputs = find(dialog, QComboBox, "outputDevice")
    input_names = [inputs.itemData(i) for i in range(inputs.count())]
    output_names = [outputs.itemData(i) for i in range(outputs.count())]
    assert input_names[0] is None and inputs.itemText(0) == "System default"
    assert {"voip_vsink_monitor", "voip_vsink2_monitor"} <= set(input_names)
    assert {"voip_vsink", "voip_vsink2"} <= set(output_names)
    real = {d.name for d in list_devices() if d.max_output_channels > 0}
    # the sound server's sinks by their own names; ALSA's "pulse"/"default" (only the system
    # default again) are left out beside them
    assert "Null Output (vsink2)" in output_names
    assert outputs.itemText(outputs.findData("Null Output (vsink2)")) == "Null Output (vsink2)"
    assert set(output_names[1:-1]) == real - {"pulse", "default"}
    assert "Monitor of Null Output (vsink.monitor)" in input_names
    assert inputs.currentData() == "voip_vsink_monitor"
    # A saved device that is not connected stays selected and says so.
    assert outputs.currentData() == "gone" and outputs.currentText() == "gone (not connected)"
    outputs.setCurrentIndex(outputs.findData("voip_vsink2"))
    assert dialog.preferences().audio.output_device == "voip_vsink2"
    outputs.setCurrentIndex(0)
    assert dialog.preferences().audio.output_device is None


def test_no_portaudio_shows_the_reason_and_what_to_do(qtbot: Any) -> None:
    def no_portaudio() -> list[Any]:
        raise AudioDeviceError(
            "the PortAudio library is not available (cannot load libportaudio.so.2); install "
            "libportaudio2 (Debian/Ubuntu) or portaudio, or use a build that bundles it"
        )

    prefs = replace(base_prefs(), audio=AudioPrefs(input_device="USB Mic"))
    dialog = make_dialog(qtbot, prefs, devices=no_portaudio)
    error = find(dialog, QLabel, "audioError")
    assert error.isVisible()
    assert "cannot be listed" in error.text() and "install libportaudio2" in error.text()
    assert not find(dialog, QPushButton, "playTone").isEnabled()
    assert not find(dialog, QPushButton, "testMicrophone").isEnabled()
    inputs = find(dialog, QComboBox, "inputDevice")
    assert inputs.count() == 2 and inputs.currentData() == "USB Mic"
    assert dialog.preferences() == prefs


# -- the device tests: real sound on the null sinks ------------------------------------------------


def test_make_tone() -> None:
    tone = make_tone(1.0)
    assert tone.shape == (RATE,) and tone.dtype == np.int16
    peak = 20 * math.log10(np.max(np.abs(tone)) / 32768)
    assert peak == pytest.approx(-12.0, abs=0.1)
    assert abs(int(tone[0])) < 10 and abs(int(tone[-1])) < 10  # faded in and out


def test_test_tone_comes_out_of_the_chosen_output(qtbot: Any, null_sink_pcms: None) -> None:
    tester = AudioTester()
    errors: list[str] = []
    tester.error.connect(errors.append)
    chosen, other = Recorder("vsink2.monitor"), Recorder("vsink.monitor")
    try:
        with qtbot.waitSignal(tester.tone_finished, timeout=AUDIO_WAIT_MS):
            assert tester.play_tone("voip_vsink2", seconds=1.0)
            assert tester.tone_playing()
        qtbot.waitUntil(chosen.heard_the_end, timeout=AUDIO_WAIT_MS)  # the tail is recorded too
    finally:
        heard, elsewhere = chosen.stop(), other.stop()
    assert errors == []
    assert not tester.tone_playing()
    peak_dbfs, hz, share = tone_analysis(heard)
    assert hz == pytest.approx(440, abs=3)
    assert share > 0.95
    assert peak_dbfs == pytest.approx(-12.0, abs=1.5)
    loud = np.flatnonzero(np.abs(heard) > 0.01)
    # One second, less what an idle null sink swallows at the start of a stream (~0.1 s).
    assert 0.8 <= (loud[-1] - loud[0]) / RATE <= 1.02
    assert np.max(np.abs(elsewhere), initial=0.0) < 0.001  # nothing on the other sink


def test_play_tone_button_uses_the_chosen_output(qtbot: Any, null_sink_pcms: None) -> None:
    dialog = make_dialog(qtbot)
    outputs = find(dialog, QComboBox, "outputDevice")
    outputs.setCurrentIndex(outputs.findData("voip_vsink2"))
    recorder = Recorder("vsink2.monitor")
    try:
        with qtbot.waitSignal(dialog.tester.tone_finished, timeout=AUDIO_WAIT_MS):
            qtbot.mouseClick(find(dialog, QPushButton, "playTone"), Qt.MouseButton.LeftButton)
        qtbot.waitUntil(recorder.heard_the_end, timeout=AUDIO_WAIT_MS)
    finally:
        heard = recorder.stop()
    _peak, hz, _share = tone_analysis(heard)
    assert hz == pytest.approx(440, abs=3)
    assert find(dialog, QLabel, "audioError").isHidden()


def test_microphone_loopback_level_and_playback(qtbot: Any, null_sink_pcms: None) -> None:
    dialog = make_dialog(qtbot)
    inputs = find(dialog, QComboBox, "inputDevice")
    outputs = find(dialog, QComboBox, "outputDevice")
    inputs.setCurrentIndex(inputs.findData("voip_vsink_monitor"))  # "microphone": vsink's monitor
    outputs.setCurrentIndex(outputs.findData("voip_vsink2"))
    toggle = find(dialog, QPushButton, "testMicrophone")
    meter = find(dialog, LevelMeter, "micLevel")
    levels: list[float] = []
    dialog.tester.level.connect(levels.append)
    recorder = Recorder("vsink2.monitor")
    source = AudioTester()  # plays into vsink: what the "microphone" hears
    try:
        with qtbot.waitSignal(dialog.tester.loopback_changed, timeout=2000) as started:
            qtbot.mouseClick(toggle, Qt.MouseButton.LeftButton)
        assert started.args == [True] and toggle.isChecked()
        qtbot.waitUntil(lambda: len(levels) >= 10, timeout=AUDIO_WAIT_MS)
        assert max(levels) < -90  # the null sink is silent before the tone
        assert source.play_tone("voip_vsink", seconds=2.0)
        # the tone fades in over a few ms: wait for its full level (a level read on the way up,
        # -13.9 dBFS, once failed the check below), then check it is the tone's and no more
        qtbot.waitUntil(lambda: max(levels) > -13.5, timeout=AUDIO_WAIT_MS)
        assert max(levels) == pytest.approx(-12.0, abs=1.5)
        assert meter.fraction() > 0.5 or max(levels[-5:]) < -60
        with qtbot.waitSignal(source.tone_finished, timeout=AUDIO_WAIT_MS):
            pass
        # the tone's end has come through the loopback to the chosen output
        qtbot.waitUntil(recorder.heard_the_end, timeout=AUDIO_WAIT_MS)
        with qtbot.waitSignal(dialog.tester.loopback_changed, timeout=2000) as stopped:
            qtbot.mouseClick(toggle, Qt.MouseButton.LeftButton)
        assert stopped.args == [False] and not toggle.isChecked()
        assert not dialog.tester.loopback_running()
    finally:
        source.stop()
        dialog.tester.stop()
        heard = recorder.stop()
    # The microphone came out of the chosen output.
    _peak, hz, share = tone_analysis(heard)
    assert hz == pytest.approx(440, abs=3) and share > 0.9


def test_loopback_error_names_the_device_and_unchecks(qtbot: Any, null_sink_pcms: None) -> None:
    dialog = make_dialog(qtbot, replace(base_prefs(), audio=AudioPrefs(input_device="gone")))
    toggle = find(dialog, QPushButton, "testMicrophone")
    with qtbot.waitSignal(dialog.tester.error, timeout=2000) as blocker:
        qtbot.mouseClick(toggle, Qt.MouseButton.LeftButton)
    assert "no input device matches 'gone'" in blocker.args[0]
    assert not toggle.isChecked() and not dialog.tester.loopback_running()
    error = find(dialog, QLabel, "audioError")
    assert error.isVisible() and "Cannot test the microphone" in error.text()


def test_closing_the_dialog_stops_the_tests(qtbot: Any, null_sink_pcms: None) -> None:
    dialog = make_dialog(qtbot)
    inputs = find(dialog, QComboBox, "inputDevice")
    inputs.setCurrentIndex(inputs.findData("voip_vsink_monitor"))
    outputs = find(dialog, QComboBox, "outputDevice")
    outputs.setCurrentIndex(outputs.findData("voip_vsink2"))
    find(dialog, QPushButton, "testMicrophone").click()
    assert dialog.tester.loopback_running()
    # the test runs in a child process of its own, not in the app (PortAudio never loads here)
    child = dialog.tester._loop
    assert child is not None
    qtbot.waitUntil(lambda: child.processId() > 0, timeout=5_000)
    pid = child.processId()

    def argv() -> list[bytes]:
        # empty between QProcess's fork and the child's exec: wait for the exec, not a time
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")

    qtbot.waitUntil(lambda: argv() != [b""], timeout=5_000)
    assert b"--audio-host" in argv() and b"--device-test" in argv() and b"loopback" in argv()
    changes: list[bool] = []
    dialog.tester.loopback_changed.connect(changes.append)
    outputs.setCurrentIndex(outputs.findData("voip_vsink"))  # the test moves to the new device
    assert changes == [False, True] and dialog.tester.loopback_running()
    assert find(dialog, QPushButton, "testMicrophone").isChecked()
    assert dialog.tester.play_tone("voip_vsink2", seconds=5.0)
    dialog.reject()
    assert not dialog.tester.loopback_running() and not dialog.tester.tone_playing()
    assert not Path(f"/proc/{pid}").exists()  # ended and reaped
    assert refresh_devices()  # no stream of ours is left open
