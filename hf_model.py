"""
The Hugging Face transformers wrapper around model.GPT: what `python model.py export` puts beside model.py
and kernels.py in an export folder, so that any configuration loads with

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

It holds no architecture: the forward pass is GPT's, and cached decoding is model.CachedDecoding, the one
GPT.generate uses, carried between the steps of transformers' generate() as its cache object. Greedy and
sampled generation work; beam search (which reorders caches) does not. Tested with transformers 5.25.
"""
import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:  # in an export folder, which transformers loads as a package
    from .model import GPT, CachedDecoding, config_from_dict
except ImportError:  # beside model.py in the repository
    from model import GPT, CachedDecoding, config_from_dict

# transformers 5 names the cache `cache`; 4.x called it `past_key_values`
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class SpeedrunConfig(PretrainedConfig):
    """The GPTConfig (as a dict, `gpt`) and the ids transformers needs; vocab_size, hidden_size and
    num_hidden_layers mirror the GPTConfig for tools that read them."""
    model_type = "speedrun-gpt"

    def __init__(self, gpt: dict | None = None, use_cache: bool = True, **kwargs):
        self.gpt, self.use_cache = dict(gpt or {}), use_cache
        if self.gpt:
            c = config_from_dict(self.gpt)
            kwargs.setdefault("tie_word_embeddings", c.tie_embeddings)
            self.vocab_size, self.hidden_size, self.num_hidden_layers = c.vocab_size, c.n_embd, c.n_layer
            self.num_attention_heads, self.max_position_embeddings = c.n_head, c.block_size
        super().__init__(**kwargs)


class SpeedrunForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = SpeedrunConfig
    base_model_prefix = "gpt"
    main_input_name = "input_ids"
    # a tied head is stored once (as the embedding); used only when config.tie_word_embeddings
    _tied_weights_keys = {"gpt.lm_head.weight": "gpt.transformer.wte.weight"}

    def __init__(self, config: SpeedrunConfig):
        super().__init__(config)
        # the full-logits head, not kernels.py's fused loss: transformers asks for logits
        self.gpt = GPT(config_from_dict(config.gpt), use_kernels=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is model.CachedDecoding, made by forward and handed back by generate()

    def _init_weights(self, module):
        """Every weight comes from model.safetensors; what transformers initialises here is GPT's
        non-persistent buffer (the attention windows), which it allocates empty when it loads a model."""
        if isinstance(module, GPT):
            with torch.no_grad():
                module.attn_windows.copy_(torch.tensor(module._config_windows(), dtype=torch.long))

    def get_input_embeddings(self):
        return self.gpt.transformer.wte

    def get_output_embeddings(self):
        return self.gpt.lm_head

    def forward(self, input_ids, attention_mask=None, cache=None, past_key_values=None, use_cache=None,
                labels=None, return_dict=None, **kwargs):
        """Logits (B, T, vocab) float32 for input_ids (B, T). Without a cache and without padding this is
        GPT's forward; with use_cache, a left-padded attention_mask or a cache from the previous step, the
        tokens go through CachedDecoding (whose `total` slots are the model's block_size)."""
        decoding = cache if cache is not None else past_key_values
        decoding = decoding if isinstance(decoding, CachedDecoding) else None  # anything else: no past
        use_cache = self.config.use_cache if use_cache is None else use_cache
        padded = attention_mask is not None and not bool(attention_mask.all())
        if decoding is None and not use_cache and not padded:
            logits = self.gpt(input_ids)
        else:
            if decoding is None:
                pad = left_padding(attention_mask, input_ids)
                decoding = CachedDecoding(self.gpt, pad, self.gpt.config.block_size)
            logits = self.gpt.logits(decoding.step(input_ids))
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here; -100 ignored
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: decoding if use_cache else None})


def left_padding(attention_mask, input_ids):
    """Padding slots at the start of each row of a (B, T) attention_mask of 0s then 1s (transformers pads
    on the left for generation); zeros without a mask. ValueError for any other mask."""
    B, T = input_ids.shape
    if attention_mask is None:
        return torch.zeros(B, dtype=torch.long, device=input_ids.device)
    mask = attention_mask.to(torch.long)
    pad = T - mask.sum(-1)
    expected = torch.arange(T, device=mask.device)[None, :] >= pad[:, None]
    if mask.shape != (B, T) or not torch.equal(mask.bool(), expected):
        raise ValueError("this model takes padding on the left only (tokenizer.padding_side = 'left'): "
                         "each row of attention_mask must be 0s then 1s")
    return pad.to(input_ids.device)
