"""
txvoice's voice pipelines, as Twisted plugins (``twistd txvoice --pipeline NAME``).

Each names its maker as a string (called with the daemon's VoiceConfig), so listing plugins
imports no pipeline.  A third-party package adds one the same way, from its own ``twisted/plugins/``.
"""

from txvoice.pipeline.registry import PipelineFactory

speech = PipelineFactory("speech", "txvoice.pipeline.speech:SpeechPipeline.fromConfig",
                         "Speech in, speech out: STT, agent and TTS engines (--stt, --agent, --tts)")
echo = PipelineFactory("echo", "txvoice.pipeline.echo:EchoPipeline.fromConfig",
                       "Answers every turn with its own audio")
