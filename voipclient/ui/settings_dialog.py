"""The settings dialog: Audio, Transmission, Hotkeys and Appearance pages.

The dialog edits a copy of :class:`~voipclient.ui.prefs.Preferences` and never touches devices,
sockets or the push-to-talk service itself: Apply and OK emit :attr:`SettingsDialog.applied` with
the new preferences and the main application applies them without a restart. Cancel emits nothing.

Hotkeys and the hot-mic channel are per server (``host:port``) and name channels by name; the
Hotkeys page is disabled, with the reason, while not connected (``server_key=None``).

Widgets carry object names (``inputDevice``, ``bindingsTable``, ...) for tests and accessibility
tools; every control has a tooltip and an accessible name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Final

from PySide6.QtCore import QRectF, QSize, Qt, Signal, Slot
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from voipclient.audio import dsp
from voipclient.audio.sd_engine import DeviceInfo, list_devices
from voipclient.errors import AudioDeviceError
from voipclient.ui.audio_test import AudioTester
from voipclient.ui.hotkey_capture import HotkeyCaptureWidget
from voipclient.ui.model import Conflict, HotkeyVerdict, find_conflicts, hotkey_rule
from voipclient.ui.prefs import AudioPrefs, BindingPref, Preferences, TransmitPrefs
from voipclient.ui.theme import WARNING_COLOUR, status_colours

__all__ = [
    "BindingEditor",
    "Conflict",
    "LevelMeter",
    "SettingsDialog",
    "find_conflicts",
    "probe_noise_suppression",
]

SYSTEM_DEFAULT: Final = "System default"
NO_CHANNEL: Final = "None"
METER_FLOOR_DBFS: Final = -60.0  # the level bars' left end

_NS_LABELS: Final = {
    "off": "Off",
    "rnnoise": "RNNoise (neural network)",
    "webrtc": "WebRTC (recommended)",
    "speex": "Speex (lightest)",
}
_MODE_LABELS: Final = {
    "ptt": "Push-to-talk only",
    "voice_activation": "Voice activation",
    "continuous": "Continuous",
}
_MODE_TIPS: Final = {
    "ptt": "Only your hotkeys transmit; the hot-mic channel stays closed.",
    "voice_activation": "The hot-mic channel transmits while you speak louder than the threshold; "
    "hotkeys still work.",
    "continuous": "The hot-mic channel always transmits; hotkeys still work.",
}
_THEME_LABELS: Final = {"dark": "Dark", "light": "Light", "system": "Follow the system"}


def _is_dark(widget: QWidget) -> bool:
    return widget.palette().window().color().lightness() < 128


def _checkbox(page: QWidget, text: str, name: str, tip: str, checked: bool) -> QCheckBox:
    """A described check box; its accessible name is its text without the mnemonic."""
    box = QCheckBox(text, page)
    _describe(box, name, text.replace("&", "").split(" (")[0], tip)
    box.setChecked(checked)
    return box


def _describe(widget: QWidget, name: str, accessible: str, tip: str) -> None:
    widget.setObjectName(name)
    widget.setAccessibleName(accessible)
    widget.setToolTip(tip)


# -- pure helpers ------------------------------------------------------------------------------


def probe_noise_suppression() -> dict[str, str]:
    """Backend name → "" if it loads here, else why not and what to install."""
    out: dict[str, str] = {}
    for name in dsp.BACKENDS:
        if name == "off":
            out[name] = ""
            continue
        try:
            dsp.open_backend(name).close()
        except dsp.BackendUnavailable as exc:
            out[name] = str(exc)
        else:
            out[name] = ""
    return out


# -- widgets -------------------------------------------------------------------------------------


class LevelMeter(QWidget):
    """A horizontal peak meter from -60 to 0 dBFS, with an optional threshold mark.

    The bar is drawn in the talking colour while ``active`` (e.g. speech detected) and in the
    palette's highlight colour otherwise. The mark is a fraction of the width (0..1).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._dbfs = -math.inf
        self._active = False
        self._mark: float | None = None
        self.setMinimumHeight(14)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(200, 16)

    def level(self) -> float:
        """The shown peak level, dBFS."""
        return self._dbfs

    def active(self) -> bool:
        return self._active

    def fraction(self) -> float:
        """How much of the bar is filled, 0..1."""
        if not math.isfinite(self._dbfs):
            return 0.0
        return min(1.0, max(0.0, 1.0 - self._dbfs / METER_FLOOR_DBFS))

    def mark(self) -> float | None:
        return self._mark

    def set_level(self, peak_dbfs: float, active: bool = False) -> None:
        self._dbfs = peak_dbfs
        self._active = active
        self.setAccessibleDescription(
            f"{peak_dbfs:.0f} dBFS" if math.isfinite(peak_dbfs) else "silence"
        )
        self.update()

    def set_mark(self, fraction: float | None) -> None:
        self._mark = None if fraction is None else min(1.0, max(0.0, fraction))
        self.update()

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        palette = self.palette()
        rect = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.setPen(palette.mid().color())
        painter.setBrush(palette.base())
        painter.drawRoundedRect(rect, 3, 3)
        fill = self.fraction()
        if fill > 0:
            colour = (
                status_colours(_is_dark(self)).talking
                if self._active
                else palette.highlight().color()
            )
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(colour)
            painter.drawRoundedRect(
                QRectF(rect.x() + 1, rect.y() + 1, (rect.width() - 2) * fill, rect.height() - 2),
                2,
                2,
            )
        if self._mark is not None:
            x = rect.x() + rect.width() * self._mark
            painter.setPen(palette.text().color())
            painter.drawLine(int(x), int(rect.top()), int(x), int(rect.bottom()))
        painter.end()


class BindingEditor(QDialog):
    """Edits one hotkey: the chord (captured), the channels it talks to, latching."""

    def __init__(
        self,
        binding: BindingPref | None,
        channels: Sequence[str],
        others: Sequence[BindingPref],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("bindingEditor")
        self.setWindowTitle("Edit hotkey" if binding else "Add hotkey")
        self.setAccessibleName(self.windowTitle())
        self._others = list(others)
        layout = QVBoxLayout(self)
        form = QFormLayout()
        layout.addLayout(form)

        self.capture = HotkeyCaptureWidget(binding.keys if binding else "", self)
        form.addRow("&Hotkey:", self.capture)

        self.channel_list = QListWidget(self)
        _describe(
            self.channel_list,
            "bindingChannels",
            "Channels",
            "Tick every channel this hotkey talks to; holding it transmits to all of them.",
        )
        chosen = set(binding.channels) if binding else set()
        names = list(channels) + [
            c for c in (binding.channels if binding else ()) if c not in channels
        ]
        for name in names:
            item = QListWidgetItem(name if name in channels else f"{name} (not on this server)")
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in chosen else Qt.CheckState.Unchecked)
            self.channel_list.addItem(item)
        form.addRow("&Channels:", self.channel_list)

        self.latching = QCheckBox("&Latching (press once to start, again to stop)", self)
        _describe(
            self.latching,
            "bindingLatching",
            "Latching",
            "Off: transmit while the hotkey is held. "
            "On: each press switches transmission on or off.",
        )
        self.latching.setChecked(binding.latching if binding else False)
        form.addRow("", self.latching)

        self.warning = QLabel(self)
        self.warning.setObjectName("bindingWarning")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet(f"color: {WARNING_COLOUR.name()}")
        layout.addWidget(self.warning)

        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        self.buttons.setObjectName("bindingButtons")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

        self.capture.captured.connect(self._refresh)
        self.channel_list.itemChanged.connect(self._refresh)
        self.latching.toggled.connect(self._refresh)
        self._refresh()

    def binding(self) -> BindingPref | None:
        """The edited binding, or None while it lacks keys or channels."""
        keys = self.capture.keys()
        picked = tuple(
            str(item.data(Qt.ItemDataRole.UserRole))
            for item in (self.channel_list.item(i) for i in range(self.channel_list.count()))
            if item.checkState() == Qt.CheckState.Checked
        )
        if not keys or not picked:
            return None
        return BindingPref(keys=keys, channels=picked, latching=self.latching.isChecked())

    @Slot()
    def _refresh(self) -> None:
        binding = self.binding()
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        messages: list[str] = []
        keys = self.capture.keys()
        verdict = hotkey_rule(self._others, keys) if keys else HotkeyVerdict()
        if not keys:
            messages.append("Click the hotkey button and press the keys to use.")
        elif verdict.refusal is not None:
            messages.append(verdict.refusal)  # the one rule: a chord already bound is refused
        elif binding is None:
            messages.append("Tick at least one channel.")
        messages.extend(verdict.warnings)
        ok.setEnabled(binding is not None and verdict.refusal is None)
        self.warning.setText("\n".join(messages))


#: PortAudio devices that only stand for the system's default (hidden beside named devices).
_GENERIC_DEVICES: Final = frozenset({"pulse", "default", "sysdefault", "pipewire"})


# -- the dialog ----------------------------------------------------------------------------------


class SettingsDialog(QDialog):
    """Preferences editor; Apply/OK emit :attr:`applied`, Cancel emits nothing."""

    #: The new :class:`Preferences` (Apply and OK); the main application applies them at once.
    applied = Signal(object)

    def __init__(
        self,
        prefs: Preferences,
        *,
        server_key: str | None,
        channels: Sequence[str],
        parent: QWidget | None = None,
        devices: Callable[[], list[DeviceInfo]] = list_devices,
        noise_suppression: Callable[[], dict[str, str]] = probe_noise_suppression,
        tester: AudioTester | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("settingsDialog")
        self.setWindowTitle("Settings")
        self.setAccessibleName("Settings")
        self._base = prefs
        self._applied_prefs = prefs
        self._server_key = server_key
        self._channels = list(channels)
        server = prefs.server(server_key) if server_key else None
        self._bindings: list[BindingPref] = list(server.bindings) if server else []
        self._bitrate = prefs.audio.bitrate  # b/s; the spin box shows kb/s
        self._threshold = prefs.transmit.vad_threshold  # the slider shows hundredths
        self.tester = tester or AudioTester(self)
        #: The open hotkey editor (Add/Edit), if any.
        self.editor: BindingEditor | None = None
        self.tester.level.connect(self._on_test_level)
        self.tester.error.connect(self._on_test_error)
        self.tester.loopback_changed.connect(self._on_loopback_changed)

        self.page_list = QListWidget(self)
        _describe(self.page_list, "pageList", "Settings pages", "Choose a page of settings.")
        self.page_list.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Expanding)
        self.page_list.setFixedWidth(150)
        self.pages = QStackedWidget(self)
        self.pages.setObjectName("pages")

        self._build_audio_page(prefs.audio, devices, noise_suppression)
        self._build_transmission_page(prefs)
        self._build_hotkeys_page()
        self._build_appearance_page(prefs)
        self.page_list.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.page_list.setCurrentRow(0)

        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok
            | QDialogButtonBox.StandardButton.Apply
            | QDialogButtonBox.StandardButton.Cancel,
            self,
        )
        self.buttons.setObjectName("buttonBox")
        for role, name, tip in (
            (QDialogButtonBox.StandardButton.Ok, "okButton", "Use these settings and close"),
            (
                QDialogButtonBox.StandardButton.Apply,
                "applyButton",
                "Use these settings now and keep editing",
            ),
            (
                QDialogButtonBox.StandardButton.Cancel,
                "cancelButton",
                "Close without applying the changes made since the last Apply",
            ),
        ):
            button = self.buttons.button(role)
            _describe(button, name, button.text().replace("&", ""), tip)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.buttons.button(QDialogButtonBox.StandardButton.Apply).clicked.connect(self.apply)

        body = QHBoxLayout()
        body.addWidget(self.page_list)
        body.addWidget(self.pages, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(body, 1)
        layout.addWidget(self.buttons)
        self._connect_changes()
        self._update_bindings_view()
        self._update_transmit_controls()
        self._update_dirty()
        self.resize(760, 520)

    # -- public API --------------------------------------------------------------------------

    def preferences(self) -> Preferences:
        """The preferences as edited so far (applied or not)."""
        base = self._base
        audio = AudioPrefs(
            input_device=self.input_device.currentData(),
            output_device=self.output_device.currentData(),
            frame_ms=int(self.frame_size.currentData()),
            bitrate=self._bitrate,
            jitter_max_ms=self.jitter_max.value(),
            noise_suppression=str(self.noise_suppression.currentData()),
            agc=self.agc.isChecked(),
            highpass=self.highpass.isChecked(),
            cues=self.cues.isChecked(),
            duck_db=float(self.duck.value()),
            echo_cancellation=str(self.echo.currentData()),
        )
        transmit = TransmitPrefs(
            mode=self._mode(), vad_threshold=self._threshold, release_ms=self.release_delay.value()
        )
        prefs = replace(
            base,
            audio=audio,
            transmit=transmit,
            theme=str(self.theme.currentData()),
            notify_mentions=self.notify_mentions.isChecked(),
            close_to_tray=self.close_to_tray.isChecked(),
        )
        key = self._server_key
        if key is not None:
            old = base.server(key)
            new = replace(old, bindings=tuple(self._bindings), hot_mic=self.hot_mic.currentData())
            if new != old:
                prefs = prefs.with_server(key, new)
        return prefs

    @Slot(float, bool)
    def set_input_level(self, peak_dbfs: float, speech: bool) -> None:
        """The capture worker's latest input peak (dBFS) and VAD decision, for the meter."""
        self.input_meter.set_level(peak_dbfs, speech)

    @Slot()
    def apply(self) -> bool:
        """Emit :attr:`applied`; False (nothing emitted) while two hotkeys share a chord."""
        refused = [c for c in find_conflicts([b.keys for b in self._bindings]) if c.kind != "part"]
        if refused:  # the one hotkey rule: never saved, whatever the table holds
            self.page_list.setCurrentRow(2)  # the Hotkeys page
            self.hotkey_warning.setText(
                "\n".join(f"⛔ {c.message}: change or remove one first" for c in refused)
            )
            self.hotkey_warning.setVisible(True)
            return False
        prefs = self.preferences()
        self._applied_prefs = prefs
        self._update_dirty()
        self.applied.emit(prefs)
        return True

    def accept(self) -> None:
        if self.apply():  # refused (two hotkeys share a chord): stay open
            super().accept()

    def done(self, result: int) -> None:
        self.tester.stop()
        super().done(result)

    # -- pages ---------------------------------------------------------------------------------

    def _add_page(self, title: str, name: str, tip: str) -> QWidget:
        page = QWidget(self.pages)
        page.setObjectName(name)
        page.setAccessibleName(f"{title} settings")
        self.pages.addWidget(page)
        item = QListWidgetItem(title, self.page_list)
        item.setToolTip(tip)
        return page

    def _build_audio_page(
        self,
        audio: AudioPrefs,
        devices: Callable[[], list[DeviceInfo]],
        noise_suppression: Callable[[], dict[str, str]],
    ) -> None:
        page = self._add_page("Audio", "audioPage", "Devices, codec, noise suppression")
        form = QFormLayout(page)

        self.input_device = QComboBox(page)
        _describe(
            self.input_device,
            "inputDevice",
            "Input device",
            "The microphone. System default follows the operating system's choice.",
        )
        self.output_device = QComboBox(page)
        _describe(
            self.output_device,
            "outputDevice",
            "Output device",
            "Where voices and cues play. System default follows the operating system's choice.",
        )
        self.audio_error = QLabel(page)
        self.audio_error.setObjectName("audioError")
        self.audio_error.setWordWrap(True)
        self.audio_error.setStyleSheet(f"color: {WARNING_COLOUR.name()}")
        self.audio_error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.audio_error.hide()
        try:
            found = devices()
        except AudioDeviceError as exc:
            found = []
            self._show_audio_error(
                f"Audio devices cannot be listed: {exc}. Until then voice uses the system default."
            )
        self._fill_devices(self.input_device, found, "input", audio.input_device)
        self._fill_devices(self.output_device, found, "output", audio.output_device)
        form.addRow("&Input device:", self.input_device)
        form.addRow("&Output device:", self.output_device)

        self.play_tone = QPushButton("&Play test tone", page)
        _describe(
            self.play_tone,
            "playTone",
            "Play test tone",
            "Plays a one-second 440 Hz tone on the chosen output device.",
        )
        self.test_mic = QPushButton("&Test microphone", page)
        self.test_mic.setCheckable(True)
        _describe(
            self.test_mic,
            "testMicrophone",
            "Test microphone",
            "Plays the chosen microphone back on the chosen output device and shows its level. "
            "Use headphones to avoid feedback.",
        )
        tests = QHBoxLayout()
        tests.addWidget(self.play_tone)
        tests.addWidget(self.test_mic)
        tests.addStretch(1)
        form.addRow("Device test:", tests)
        self.mic_level = LevelMeter(page)
        _describe(
            self.mic_level,
            "micLevel",
            "Microphone level",
            "The microphone's peak level during the microphone test (-60 to 0 dBFS).",
        )
        form.addRow("Microphone level:", self.mic_level)
        form.addRow(self.audio_error)
        if not found:
            for button in (self.play_tone, self.test_mic):
                button.setEnabled(False)
                button.setToolTip(f"{button.toolTip()} Unavailable: no audio devices.")

        self.frame_size = QComboBox(page)
        self.frame_size.addItem("20 ms (recommended)", 20)
        self.frame_size.addItem("10 ms (lower latency, about 15 % more data)", 10)
        self.frame_size.setCurrentIndex(self.frame_size.findData(audio.frame_ms))
        _describe(
            self.frame_size,
            "frameSize",
            "Frame size",
            "Audio per packet. 10 ms lowers the delay by 10 ms but sends more packets.",
        )
        form.addRow("&Frame size:", self.frame_size)

        self.bitrate_slider = QSlider(Qt.Orientation.Horizontal, page)
        self.bitrate_slider.setRange(16, 128)
        self.bitrate_slider.setPageStep(8)
        _describe(
            self.bitrate_slider,
            "bitrateSlider",
            "Bitrate",
            "Opus bitrate in kb/s (16 to 128). 32 kb/s is clear speech; more helps music.",
        )
        self.bitrate_spin = QSpinBox(page)
        self.bitrate_spin.setRange(16, 128)
        self.bitrate_spin.setSuffix(" kb/s")
        _describe(
            self.bitrate_spin,
            "bitrateSpin",
            "Bitrate in kilobits per second",
            self.bitrate_slider.toolTip(),
        )
        kbps = round(audio.bitrate / 1000)
        self.bitrate_slider.setValue(kbps)
        self.bitrate_spin.setValue(kbps)
        self.bitrate_slider.valueChanged.connect(self.bitrate_spin.setValue)
        self.bitrate_spin.valueChanged.connect(self.bitrate_slider.setValue)
        self.bitrate_spin.valueChanged.connect(self._on_bitrate)
        bitrate = QHBoxLayout()
        bitrate.addWidget(self.bitrate_slider, 1)
        bitrate.addWidget(self.bitrate_spin)
        bitrate_label = QLabel("&Bitrate:", page)  # a layout has no buddy: name the slider
        bitrate_label.setBuddy(self.bitrate_slider)
        form.addRow(bitrate_label, bitrate)

        self.jitter_max = QSpinBox(page)
        self.jitter_max.setRange(60, 1000)
        self.jitter_max.setSingleStep(10)
        self.jitter_max.setSuffix(" ms")
        self.jitter_max.setValue(audio.jitter_max_ms)
        _describe(
            self.jitter_max,
            "jitterMax",
            "Jitter buffer maximum",
            "The most delay the jitter buffer may add to smooth out a bad network (60 to 1000 ms). "
            "It adapts below this on its own.",
        )
        form.addRow("&Jitter buffer max:", self.jitter_max)

        self.noise_suppression = QComboBox(page)
        _describe(
            self.noise_suppression,
            "noiseSuppression",
            "Noise suppression",
            "Removes steady background noise (fans, keyboards) from your microphone.",
        )
        self.ns_status = QLabel(page)
        self.ns_status.setObjectName("noiseSuppressionStatus")
        self.ns_status.setWordWrap(True)
        self._fill_noise_suppression(audio.noise_suppression, noise_suppression())
        form.addRow("&Noise suppression:", self.noise_suppression)
        form.addRow(self.ns_status)

        self.echo = QComboBox(page)
        for label, mode in (
            ("Automatic (off for headsets)", "auto"),
            ("On (speakers)", "on"),
            ("Off", "off"),
        ):
            self.echo.addItem(label, mode)
        self.echo.setCurrentIndex(max(0, self.echo.findData(audio.echo_cancellation)))
        _describe(
            self.echo,
            "echoCancellation",
            "Echo cancellation",
            "On speakers, your microphone hears the others: this removes them from what you "
            "send, so nobody hears themselves. Automatic turns it off for a headset (by its "
            "name). While others talk, your own voice may sound a little thinner to them.",
        )
        form.addRow("&Echo cancellation:", self.echo)

        self.agc = _checkbox(
            page,
            "Automatic &gain control",
            "agc",
            "Evens out your volume: quiet speech is raised, loud speech lowered.",
            audio.agc,
        )
        self.highpass = _checkbox(
            page,
            "&High-pass filter (remove rumble below 80 Hz)",
            "highpass",
            "Removes hum and desk rumble below 80 Hz, under any voice.",
            audio.highpass,
        )
        self.cues = _checkbox(
            page,
            "Play &cues when transmission starts and stops",
            "cues",
            "A short sound tells you when your push-to-talk starts and stops.",
            audio.cues,
        )
        for box in (self.agc, self.highpass, self.cues):
            form.addRow("", box)
        self.duck = QSpinBox(page)
        self.duck.setRange(-40, 0)
        self.duck.setSuffix(" dB")
        self.duck.setValue(round(audio.duck_db))
        _describe(
            self.duck,
            "duckDb",
            "Priority channel ducking",
            "While someone talks in a channel marked Priority, every other channel is turned "
            "down by this much (0 dB: not at all).",
        )
        form.addRow("Priority channel &ducks others by:", self.duck)

        self.play_tone.clicked.connect(self._on_play_tone)
        self.test_mic.toggled.connect(self._on_test_mic)
        self.input_device.currentIndexChanged.connect(self._restart_loopback)
        self.output_device.currentIndexChanged.connect(self._restart_loopback)

    def _show_audio_error(self, text: str) -> None:
        self.audio_error.setText(text)
        self.audio_error.setVisible(bool(text))

    @staticmethod
    def _fill_devices(
        combo: QComboBox, devices: Sequence[DeviceInfo], kind: str, current: str | None
    ) -> None:
        combo.addItem(SYSTEM_DEFAULT, None)
        seen: set[str] = set()
        # With the sound server's own devices listed by name (headsets, built-in audio), ALSA's
        # "pulse" / "default" only repeat "System default": they are left out.
        named = any(d.pulse_name is not None for d in devices)
        for d in devices:
            channels = d.max_input_channels if kind == "input" else d.max_output_channels
            if channels <= 0 or d.name in seen:
                continue  # preferences store names: the first device of a name is the one used
            if named and d.pulse_name is None and d.name in _GENERIC_DEVICES:
                continue
            seen.add(d.name)
            label = d.name if d.pulse_name is not None else f"{d.name} ({d.hostapi})"
            combo.addItem(label, d.name)
            combo.setItemData(combo.count() - 1, d.label(), Qt.ItemDataRole.ToolTipRole)
        if current is not None and current not in seen:
            combo.addItem(f"{current} (not connected)", current)
            combo.setItemData(
                combo.count() - 1,
                "Saved choice; this device is not connected now, so the system default is used.",
                Qt.ItemDataRole.ToolTipRole,
            )
        combo.setCurrentIndex(max(0, combo.findData(current)))

    def _fill_noise_suppression(self, current: str, status: dict[str, str]) -> None:
        combo = self.noise_suppression
        model = combo.model()
        assert isinstance(model, QStandardItemModel)
        for name in dsp.BACKENDS:
            combo.addItem(_NS_LABELS.get(name, name), name)
            reason = status.get(name, "")
            item = model.item(combo.count() - 1)
            if reason:
                item.setEnabled(False)
                item.setToolTip(f"Unavailable: {reason}")
                item.setText(f"{item.text()} — unavailable")
        combo.setCurrentIndex(max(0, combo.findData(current)))
        self._ns_reasons = status
        combo.currentIndexChanged.connect(self._update_ns_status)
        self._update_ns_status()

    @Slot()
    def _update_ns_status(self) -> None:
        name = str(self.noise_suppression.currentData())
        reason = self._ns_reasons.get(name, "")
        unavailable = [n for n, r in self._ns_reasons.items() if r]
        if reason:
            text = f"{_NS_LABELS.get(name, name)} cannot run here ({reason}); noise suppression "
            text += "stays off until it is installed."
        elif unavailable:
            names = ", ".join(_NS_LABELS.get(n, n) for n in unavailable)
            text = f"Not installed: {names} (hover for what to install)."
        else:
            text = ""
        self.ns_status.setText(text)
        self.ns_status.setVisible(bool(text))

    def _build_transmission_page(self, prefs: Preferences) -> None:
        page = self._add_page("Transmission", "transmissionPage", "Hot mic, voice activation")
        layout = QVBoxLayout(page)
        intro = QLabel(
            "Your hotkeys always work. The hot-mic channel can also transmit on its own:", page
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.mode_group = QButtonGroup(page)
        self.mode_buttons: dict[str, QRadioButton] = {}
        for mode, label in _MODE_LABELS.items():
            button = QRadioButton(label, page)
            camel = "".join(p.capitalize() for p in mode.split("_"))
            _describe(button, f"mode{camel}", label, _MODE_TIPS[mode])
            button.setChecked(prefs.transmit.mode == mode)
            self.mode_group.addButton(button)
            self.mode_buttons[mode] = button
            layout.addWidget(button)
        form = QFormLayout()
        layout.addLayout(form)

        self.hot_mic = QComboBox(page)
        _describe(
            self.hot_mic,
            "hotMic",
            "Hot-mic channel",
            "The channel that voice activation or continuous mode transmits to (this server).",
        )
        self.hot_mic.addItem(NO_CHANNEL, None)
        current = prefs.server(self._server_key).hot_mic if self._server_key else None
        for name in self._channels:
            self.hot_mic.addItem(name, name)
        if current is not None and current not in self._channels:
            self.hot_mic.addItem(f"{current} (not on this server)", current)
        self.hot_mic.setCurrentIndex(max(0, self.hot_mic.findData(current)))
        if self._server_key is None:
            self.hot_mic.setEnabled(False)
            self.hot_mic.setToolTip("Connect to a server to choose its hot-mic channel.")
        form.addRow("Hot-mic &channel:", self.hot_mic)

        self.threshold = QSlider(Qt.Orientation.Horizontal, page)
        self.threshold.setRange(0, 100)
        self.threshold.setValue(round(prefs.transmit.vad_threshold * 100))
        _describe(
            self.threshold,
            "vadThreshold",
            "Activation threshold",
            "How sure the speech detector must be before voice activation transmits. Left: "
            "transmits more easily (also noise); right: needs clear speech.",
        )
        self.threshold.valueChanged.connect(self._on_threshold)
        form.addRow("Activation &threshold:", self.threshold)
        self.input_meter = LevelMeter(page)
        _describe(
            self.input_meter,
            "inputMeter",
            "Input level",
            "Your microphone's peak level. The bar turns green while voice activation hears "
            "speech; the line marks the threshold's position.",
        )
        self.input_meter.set_mark(prefs.transmit.vad_threshold)
        form.addRow("Input level:", self.input_meter)

        self.release_delay = QSpinBox(page)
        self.release_delay.setRange(0, 2000)
        self.release_delay.setSingleStep(50)
        self.release_delay.setSuffix(" ms")
        self.release_delay.setValue(prefs.transmit.release_ms)
        _describe(
            self.release_delay,
            "releaseDelay",
            "Release delay",
            "Transmission continues this long after you let go of a hotkey or stop speaking, so "
            "the end of a word is not cut off (0 to 2000 ms).",
        )
        form.addRow("&Release delay:", self.release_delay)
        self.transmit_note = QLabel(page)
        self.transmit_note.setObjectName("transmitNote")
        self.transmit_note.setWordWrap(True)
        layout.addWidget(self.transmit_note)
        layout.addStretch(1)
        self.mode_group.buttonToggled.connect(self._update_transmit_controls)
        self.hot_mic.currentIndexChanged.connect(self._update_transmit_controls)

    def _build_hotkeys_page(self) -> None:
        page = self._add_page("Hotkeys", "hotkeysPage", "Push-to-talk keys per channel")
        layout = QVBoxLayout(page)
        self.hotkeys_disabled = QLabel(
            "Not connected: hotkeys belong to a server. Connect to a server to edit its "
            "push-to-talk hotkeys.",
            page,
        )
        self.hotkeys_disabled.setObjectName("hotkeysDisabled")
        self.hotkeys_disabled.setWordWrap(True)
        self.hotkeys_disabled.setVisible(self._server_key is None)
        layout.addWidget(self.hotkeys_disabled)
        if self._server_key is not None:
            title = QLabel(f"Push-to-talk hotkeys on {self._server_key}:", page)
            title.setObjectName("hotkeysTitle")
            layout.addWidget(title)

        self.bindings_table = QTableWidget(0, 3, page)
        self.bindings_table.setHorizontalHeaderLabels(["Hotkey", "Channels", "Mode"])
        _describe(
            self.bindings_table,
            "bindingsTable",
            "Hotkeys",
            "Every push-to-talk hotkey on this server. Double-click a row to edit it.",
        )
        table = self.bindings_table
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.verticalHeader().setVisible(False)
        header = table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        layout.addWidget(table, 1)

        self.hotkey_warning = QLabel(page)
        self.hotkey_warning.setObjectName("hotkeyWarning")
        self.hotkey_warning.setWordWrap(True)
        self.hotkey_warning.setStyleSheet(f"color: {WARNING_COLOUR.name()}")
        self.hotkey_warning.setAccessibleName("Hotkey conflicts")
        layout.addWidget(self.hotkey_warning)

        buttons = QHBoxLayout()
        self.add_binding = QPushButton("&Add…", page)
        _describe(self.add_binding, "addBinding", "Add hotkey", "Add a push-to-talk hotkey.")
        self.edit_binding = QPushButton("&Edit…", page)
        _describe(self.edit_binding, "editBinding", "Edit hotkey", "Change the selected hotkey.")
        self.remove_binding = QPushButton("&Remove", page)
        _describe(
            self.remove_binding, "removeBinding", "Remove hotkey", "Delete the selected hotkey."
        )
        for button in (self.add_binding, self.edit_binding, self.remove_binding):
            button.setAutoDefault(False)
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout.addLayout(buttons)

        self.add_binding.clicked.connect(self._on_add_binding)
        self.edit_binding.clicked.connect(self._on_edit_binding)
        self.remove_binding.clicked.connect(self._on_remove_binding)
        table.itemSelectionChanged.connect(self._update_binding_buttons)
        table.cellDoubleClicked.connect(lambda _row, _col: self._on_edit_binding())
        if self._server_key is None:
            for widget in (table, self.add_binding, self.edit_binding, self.remove_binding):
                widget.setEnabled(False)
                widget.setToolTip("Connect to a server to edit its hotkeys.")

    def _build_appearance_page(self, prefs: Preferences) -> None:
        page = self._add_page("Appearance", "appearancePage", "Theme, notifications, tray")
        form = QFormLayout(page)
        self.theme = QComboBox(page)
        for name, label in _THEME_LABELS.items():
            self.theme.addItem(label, name)
        self.theme.setCurrentIndex(max(0, self.theme.findData(prefs.theme)))
        _describe(
            self.theme,
            "theme",
            "Theme",
            "Dark, light, or follow the operating system's setting (changes with it).",
        )
        form.addRow("&Theme:", self.theme)
        self.notify_mentions = QCheckBox("&Notify me when someone mentions me", page)
        _describe(
            self.notify_mentions,
            "notifyMentions",
            "Notify on mentions",
            "A desktop notification when a message mentions your name.",
        )
        self.notify_mentions.setChecked(prefs.notify_mentions)
        self.close_to_tray = QCheckBox("&Closing the window keeps voipclient in the tray", page)
        _describe(
            self.close_to_tray,
            "closeToTray",
            "Close to tray",
            "Closing the main window hides it to the system tray instead of quitting, "
            "so you stay connected.",
        )
        self.close_to_tray.setChecked(prefs.close_to_tray)
        form.addRow("", self.notify_mentions)
        form.addRow("", self.close_to_tray)

    # -- change tracking ---------------------------------------------------------------------

    def _connect_changes(self) -> None:
        for combo in (
            self.input_device,
            self.output_device,
            self.frame_size,
            self.noise_suppression,
            self.echo,
            self.hot_mic,
            self.theme,
        ):
            combo.currentIndexChanged.connect(self._update_dirty)
        for spin in (self.bitrate_spin, self.jitter_max, self.release_delay, self.duck):
            spin.valueChanged.connect(self._update_dirty)
        self.threshold.valueChanged.connect(self._update_dirty)
        for box in (self.agc, self.highpass, self.cues, self.notify_mentions, self.close_to_tray):
            box.toggled.connect(self._update_dirty)
        self.mode_group.buttonToggled.connect(self._update_dirty)

    @Slot()
    def _update_dirty(self) -> None:
        apply = self.buttons.button(QDialogButtonBox.StandardButton.Apply)
        apply.setEnabled(self.preferences() != self._applied_prefs)

    @Slot(int)
    def _on_bitrate(self, kbps: int) -> None:
        self._bitrate = kbps * 1000

    @Slot(int)
    def _on_threshold(self, hundredths: int) -> None:
        self._threshold = hundredths / 100
        self.input_meter.set_mark(self._threshold)

    def _mode(self) -> str:
        for mode, button in self.mode_buttons.items():
            if button.isChecked():
                return mode
        return "ptt"

    @Slot()
    def _update_transmit_controls(self) -> None:
        mode = self._mode()
        self.threshold.setEnabled(mode == "voice_activation")
        note = ""
        if mode != "ptt" and self.hot_mic.currentData() is None:
            note = (
                "Choose a hot-mic channel: without one, only your hotkeys transmit."
                if self._server_key
                else "Connect to a server and choose its hot-mic channel: until then, only your "
                "hotkeys transmit."
            )
        self.transmit_note.setText(note)
        self.transmit_note.setVisible(bool(note))

    # -- audio tests -----------------------------------------------------------------------------

    @Slot()
    def _on_play_tone(self) -> None:
        self._show_audio_error("")
        self.tester.play_tone(self.output_device.currentData())

    @Slot(bool)
    def _on_test_mic(self, on: bool) -> None:
        if on == self.tester.loopback_running():
            return
        if on:
            self._show_audio_error("")
            if not self.tester.start_loopback(
                self.input_device.currentData(), self.output_device.currentData()
            ):
                self.test_mic.setChecked(False)
        else:
            self.tester.stop_loopback()

    @Slot()
    def _restart_loopback(self) -> None:
        """A device changed during the microphone test: test the new pair."""
        if self.tester.loopback_running():
            self.tester.stop_loopback()
            self.test_mic.setChecked(True)

    @Slot(bool)
    def _on_loopback_changed(self, running: bool) -> None:
        self.test_mic.setChecked(running)
        if not running:
            self.mic_level.set_level(-math.inf)

    @Slot(float)
    def _on_test_level(self, peak_dbfs: float) -> None:
        self.mic_level.set_level(peak_dbfs)

    @Slot(str)
    def _on_test_error(self, message: str) -> None:
        self._show_audio_error(message)

    # -- hotkeys ---------------------------------------------------------------------------------

    def _selected_row(self) -> int | None:
        rows = self.bindings_table.selectionModel().selectedRows()
        return rows[0].row() if rows else None

    @Slot()
    def _update_binding_buttons(self) -> None:
        selected = self._server_key is not None and self._selected_row() is not None
        self.edit_binding.setEnabled(selected)
        self.remove_binding.setEnabled(selected)

    def _update_bindings_view(self) -> None:
        table = self.bindings_table
        selected = self._selected_row()
        conflicts = find_conflicts([b.keys for b in self._bindings])
        bad_rows = {row for c in conflicts for row in c.rows}
        tint = QColor(status_colours(_is_dark(self)).warning)
        tint.setAlpha(70)
        table.setRowCount(len(self._bindings))
        for row, binding in enumerate(self._bindings):
            texts = (
                binding.keys,
                ", ".join(binding.channels),
                "Latching" if binding.latching else "Hold to talk",
            )
            for col, text in enumerate(texts):
                item = QTableWidgetItem(text)
                if row in bad_rows:
                    item.setBackground(tint)
                    item.setToolTip("\n".join(c.message for c in conflicts if row in c.rows))
                table.setItem(row, col, item)
        if selected is not None and selected < len(self._bindings):
            table.selectRow(selected)
        self.hotkey_warning.setText("\n".join(f"⚠ {c.message}" for c in conflicts))
        self.hotkey_warning.setVisible(bool(conflicts))
        self._update_binding_buttons()

    def _open_editor(self, row: int | None) -> None:
        binding = self._bindings[row] if row is not None else None
        others = [b for i, b in enumerate(self._bindings) if i != row]
        editor = BindingEditor(binding, self._channels, others, self)
        self.editor = editor

        def accepted() -> None:
            edited = editor.binding()
            if edited is None:
                return
            if row is None:
                self._bindings.append(edited)
            else:
                self._bindings[row] = edited
            self._update_bindings_view()
            self.bindings_table.selectRow(row if row is not None else len(self._bindings) - 1)
            self._update_dirty()

        def finished() -> None:
            if self.editor is editor:
                self.editor = None
            editor.deleteLater()

        editor.accepted.connect(accepted)
        editor.finished.connect(finished)
        editor.open()
        if binding is None:
            editor.capture.start_capture()

    @Slot()
    def _on_add_binding(self) -> None:
        self._open_editor(None)

    @Slot()
    def _on_edit_binding(self) -> None:
        row = self._selected_row()
        if row is not None and self._server_key is not None:
            self._open_editor(row)

    @Slot()
    def _on_remove_binding(self) -> None:
        row = self._selected_row()
        if row is None:
            return
        del self._bindings[row]
        self._update_bindings_view()
        self._update_dirty()
