"""First-run setup: a nickname, the microphone and speakers (with a live meter, a test tone and a
loopback test), and how to talk: a push-to-talk key (keyboard or mouse button, captured) or voice
activation with its threshold set against the live meter.

Shown once at the first start (skippable: "Skip" keeps the defaults and never asks again) and
re-opened from Help → "Set up voice…". It only collects :class:`SetupChoices`; the app applies
them (:meth:`voipclient.ui.controller.ClientController.apply_setup`): the nickname becomes the
default everywhere, the key becomes the push-to-talk key of the channel you are in (now, or on
the first server where you have no key yet), voice activation makes that channel the hot-mic one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSlider,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from voipclient.audio.sd_engine import DeviceInfo
from voipclient.ui.audio_test import AudioTester
from voipclient.ui.connect_dialog import MAX_USERNAME_LEN, validate_username
from voipclient.ui.hotkey_capture import HotkeyCaptureWidget
from voipclient.ui.prefs import Preferences
from voipclient.ui.settings_dialog import LevelMeter, SettingsDialog

__all__ = ["SetupChoices", "SetupWizard"]

MODE_PTT: Final = "ptt"
MODE_VOICE: Final = "voice_activation"


@dataclass(frozen=True, slots=True)
class SetupChoices:
    username: str
    input_device: str | None
    output_device: str | None
    #: "ptt" (talk while ``keys`` is held) or "voice_activation" (talk when you speak).
    mode: str
    #: The push-to-talk chord ("f13", "ctrl+t", "mouse4"), "" for voice activation.
    keys: str
    vad_threshold: float


def _describe(widget: QWidget, name: str, accessible: str, tip: str) -> None:
    widget.setObjectName(name)
    widget.setAccessibleName(accessible)
    widget.setToolTip(tip)


class _NamePage(QWizardPage):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.setTitle("Your name")
        self.setSubTitle("What others see next to your voice and your messages.")
        self.name_edit = QLineEdit(name)
        _describe(self.name_edit, "setupName", "Nickname", "At most 32 characters")
        self.name_edit.setMaxLength(MAX_USERNAME_LEN)
        self.problem = QLabel()
        self.problem.setObjectName("setupNameProblem")
        self.problem.setTextFormat(Qt.TextFormat.PlainText)
        self.problem.setWordWrap(True)
        form = QFormLayout(self)
        label = QLabel("&Nickname:")
        label.setBuddy(self.name_edit)
        form.addRow(label, self.name_edit)
        form.addRow(self.problem)
        self.name_edit.textChanged.connect(self._changed)
        self._changed()

    @Slot()
    def _changed(self) -> None:
        name = self.name_edit.text().strip()
        why = validate_username(name) if name else "Choose a name."
        self.problem.setText(why or "")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        name = self.name_edit.text().strip()
        return bool(name) and validate_username(name) is None


class _AudioPage(QWizardPage):
    def __init__(
        self, prefs: Preferences, devices: Sequence[DeviceInfo], tester: AudioTester
    ) -> None:
        super().__init__()
        self.setTitle("Microphone and speakers")
        self.setSubTitle(
            "Speak: the bar moves with your voice. Play the tone to check the speakers, or test "
            "the microphone to hear yourself."
        )
        self.tester = tester
        self.input_device = QComboBox()
        _describe(self.input_device, "setupInput", "Microphone", "The microphone to talk with")
        SettingsDialog._fill_devices(self.input_device, devices, "input", prefs.audio.input_device)
        self.input_device.setCurrentIndex(
            max(0, self.input_device.findData(prefs.audio.input_device))
        )
        self.output_device = QComboBox()
        _describe(self.output_device, "setupOutput", "Speakers", "Where you hear the others")
        SettingsDialog._fill_devices(
            self.output_device, devices, "output", prefs.audio.output_device
        )
        self.output_device.setCurrentIndex(
            max(0, self.output_device.findData(prefs.audio.output_device))
        )
        self.meter = LevelMeter()
        _describe(self.meter, "setupMeter", "Microphone level", "Your microphone, live")
        self.play_tone = QPushButton("&Play test tone")
        _describe(self.play_tone, "setupTone", "Play test tone", "A short tone on the speakers")
        self.test_mic = QPushButton("&Hear yourself")
        self.test_mic.setCheckable(True)
        _describe(
            self.test_mic,
            "setupLoopback",
            "Hear yourself",
            "Plays your microphone on the speakers while pressed (use headphones)",
        )
        self.error = QLabel()
        self.error.setObjectName("setupAudioError")
        self.error.setTextFormat(Qt.TextFormat.PlainText)
        self.error.setWordWrap(True)
        form = QFormLayout(self)
        for text, widget in (
            ("&Microphone:", self.input_device),
            ("&Speakers:", self.output_device),
        ):
            label = QLabel(text)
            label.setBuddy(widget)
            form.addRow(label, widget)
        level = QLabel("Level:")
        level.setBuddy(self.meter)
        form.addRow(level, self.meter)
        buttons = QHBoxLayout()
        buttons.addWidget(self.play_tone)
        buttons.addWidget(self.test_mic)
        buttons.addStretch(1)
        form.addRow(buttons)
        form.addRow(self.error)
        self.play_tone.clicked.connect(
            lambda: self.tester.play_tone(self.output_device.currentData())
        )
        self.test_mic.toggled.connect(self._loopback)
        tester.level.connect(self._test_level)
        tester.error.connect(self.error.setText)
        tester.loopback_changed.connect(self.test_mic.setChecked)

    @Slot(bool)
    def _loopback(self, on: bool) -> None:
        if on == self.tester.loopback_running():
            return
        if on:
            self.error.setText("")
            if not self.tester.start_loopback(
                self.input_device.currentData(), self.output_device.currentData()
            ):
                self.test_mic.setChecked(False)
        else:
            self.tester.stop_loopback()

    @Slot(float)
    def _test_level(self, peak_dbfs: float) -> None:
        self.meter.set_level(peak_dbfs)


class _TalkPage(QWizardPage):
    def __init__(self, prefs: Preferences) -> None:
        super().__init__()
        self.setTitle("How do you want to talk?")
        self.setSubTitle(
            "Either way you can add a key per channel later: click a channel, then its "
            "push-to-talk key."
        )
        self.ptt = QRadioButton("Push-to-&talk: talk while a key or mouse button is held")
        _describe(self.ptt, "setupPtt", "Push-to-talk", "Nobody hears you until you press it")
        self.voice = QRadioButton("&Voice activation: talk when you speak")
        _describe(
            self.voice,
            "setupVoice",
            "Voice activation",
            "Transmits when the microphone hears speech above the threshold",
        )
        group = QButtonGroup(self)
        group.addButton(self.ptt)
        group.addButton(self.voice)
        self.capture = HotkeyCaptureWidget(prefs.default_ptt)
        self.capture.setObjectName("setupKey")
        self.capture.setAccessibleName("Push-to-talk key")
        self.capture.setToolTip("Click, then press a key, a combination or a mouse button")
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 100)
        self.threshold.setValue(round(prefs.transmit.vad_threshold * 100))
        _describe(
            self.threshold,
            "setupThreshold",
            "Activation threshold",
            "Speak normally: put the line just left of where the bar goes when you speak, and "
            "right of where it stays when you are silent.",
        )
        self.meter = LevelMeter()
        _describe(self.meter, "setupVoiceMeter", "Speech level", "Green while speech is heard")
        self.meter.set_mark(prefs.transmit.vad_threshold)
        layout = QVBoxLayout(self)
        layout.addWidget(self.ptt)
        key_row = QHBoxLayout()
        key_label = QLabel("&Key:")
        key_label.setBuddy(self.capture)
        key_row.addSpacing(24)
        key_row.addWidget(key_label)
        key_row.addWidget(self.capture, 1)
        layout.addLayout(key_row)
        layout.addWidget(self.voice)
        form = QFormLayout()
        form.setContentsMargins(24, 0, 0, 0)
        threshold_label = QLabel("T&hreshold:")
        threshold_label.setBuddy(self.threshold)
        form.addRow(threshold_label, self.threshold)
        form.addRow("Speech:", self.meter)
        layout.addLayout(form)
        layout.addStretch(1)
        self.ptt.setChecked(prefs.transmit.mode != MODE_VOICE)
        self.voice.setChecked(prefs.transmit.mode == MODE_VOICE)
        for signal in (self.ptt.toggled, self.capture.captured):
            signal.connect(self._changed)
        self.threshold.valueChanged.connect(lambda v: self.meter.set_mark(v / 100))
        self._changed()

    @Slot()
    def _changed(self) -> None:
        ptt = self.ptt.isChecked()
        self.capture.setEnabled(ptt)
        self.threshold.setEnabled(not ptt)
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return self.voice.isChecked() or bool(self.capture.keys())


class SetupWizard(QWizard):
    """See the module docstring. ``choices()`` after it was accepted; ``set_input_level`` feeds
    the live meters (the app connects it to the capture worker's levels while it is open)."""

    def __init__(
        self,
        prefs: Preferences,
        devices: Sequence[DeviceInfo],
        *,
        username: str,
        tester: AudioTester | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("setupWizard")
        self.setWindowTitle("Set up voice")
        self.setAccessibleName("Set up voice")
        self.setWizardStyle(QWizard.WizardStyle.ClassicStyle)
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage)
        self.setButtonText(QWizard.WizardButton.CancelButton, "Skip")
        self.setButtonText(QWizard.WizardButton.FinishButton, "Start talking")
        self.tester = tester or AudioTester(self)
        self.name_page = _NamePage(username)
        self.audio_page = _AudioPage(prefs, devices, self.tester)
        self.talk_page = _TalkPage(prefs)
        for page in (self.name_page, self.audio_page, self.talk_page):
            self.addPage(page)
        self._threshold = prefs.transmit.vad_threshold
        self.setMinimumWidth(560)

    @Slot(float, float)
    def set_input_level(self, peak_dbfs: float, speech: float) -> None:
        """The capture worker's peak (dBFS) and speech probability, for both meters."""
        level = peak_dbfs if math.isfinite(peak_dbfs) else -math.inf
        if not self.tester.loopback_running():
            self.audio_page.meter.set_level(level, speech > self.talk_page.threshold.value() / 100)
        self.talk_page.meter.set_level(level, speech > self.talk_page.threshold.value() / 100)

    def choices(self) -> SetupChoices:
        talk = self.talk_page
        voice = talk.voice.isChecked()
        return SetupChoices(
            username=self.name_page.name_edit.text().strip(),
            input_device=self.audio_page.input_device.currentData(),
            output_device=self.audio_page.output_device.currentData(),
            mode=MODE_VOICE if voice else MODE_PTT,
            keys="" if voice else talk.capture.keys(),
            vad_threshold=talk.threshold.value() / 100,
        )

    def done(self, result: int) -> None:
        self.tester.stop()
        super().done(result)
