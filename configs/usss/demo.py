r"""USSS on the demo's two domains: one model over "day" (11 classes) and "night" (6).

Command (the variant after a colon):
  python main.py --config configs/usss/demo.py:usss --workdir /tmp/usss_demo

The digit scenes of configs/demo.py in its two domains (ddfp_jax/data/demo.py): "day",
background and the ten digits, and "night", darker and grainier, with the coarser label
space background + five digit pairs. Each domain has the demo's 150 labeled and 890
unlabeled training scenes and 200 validation scenes; the model is the demo's (a width-1/4
ResNet-18 DeepLabV3+ at output stride 8, trained from scratch with AdamW at 3e-3 for 2500
steps of 125) as the shared encoder up to its 64-channel pixel features at stride 4, a
1 x 1 head per domain and a 16-channel embedding head. Each step takes 8 labeled and 8
unlabeled scenes of each domain.

The comparison of the paper (section 7 of the spec), as the harness runs it
(docs/compare.md; each row is this config with the overrides after the method):
  usss     alpha = beta = 1 against class centroids: the first 10 of the 20 epochs
           supervised (the stage-1 model), the 10th collecting the centroids, the
           entropies from epoch 10 on
  random   usss.label_embeddings=random (the release's label embeddings)
  joint    usss.alpha=0.0,usss.beta=0.0 (both domains, supervised: the joint baseline)
  day      usss.domains=day,usss.alpha=0.0,usss.beta=0.0 (supervised on one domain,
  night    usss.domains=night,... the same model and head)
  kmeans   usss.per_class=3,usss.collect_epochs=2 (three centroids per class by k-means,
           the paper's several per class: the class means in epoch 8, one Lloyd
           iteration in epoch 9)
  finetune_night  night alone, supervised, started from the day row's run of the same
           seed (usss.init_from=WORKDIR/usss_demo/day_s{seed}: its encoder and embedding
           head after its 2500 steps, a fresh head; the fine-tuning baseline)
  finetune_day    day alone from the night row's run, likewise

  python -m ddfp_jax.tools.compare --name usss_demo --config configs/usss/demo.py \
      --methods usss --variant random=usss,usss.label_embeddings=random \
      --variant joint=usss,usss.alpha=0.0,usss.beta=0.0 \
      --variant day=usss,usss.domains=day,usss.alpha=0.0,usss.beta=0.0 \
      --variant night=usss,usss.domains=night,usss.alpha=0.0,usss.beta=0.0 \
      --variant kmeans=usss,usss.per_class=3,usss.collect_epochs=2 \
      --variant finetune_night=usss,usss.domains=night,usss.alpha=0.0,usss.beta=0.0,usss.init_from=/tmp/compare/usss_demo/day_s{seed} \
      --variant finetune_day=usss,usss.domains=day,usss.alpha=0.0,usss.beta=0.0,usss.init_from=/tmp/compare/usss_demo/night_s{seed} \
      --paired_with joint --seeds 0 1 2 --workdir /tmp/compare

Chosen before any run with the entropies: stage 1 is half the schedule (the paper's
stage 1 is a whole supervised training; here it must leave stage 2 as long), d_e = 16
(the spec's demo value, a quarter of the features' width as the release's 100 of 512
is a fifth), alpha = beta = 1 (the paper's full model), m = 3 centroids per class for
"kmeans" (added after the first five rows had run; no other m was tried). The
fine-tuning rows were added last; the harness starts each once the run it starts from
has finished. Their source paths name /tmp/compare: with another --workdir, change them.
"""
from configs import demo


def recipe(config) -> None:
  """USSS's settings on the demo (the docstring): the row "usss"."""
  config.method = "usss"
  config.usss.domains = "day,night"
  config.usss.domain_data = {"day": {"demo_domain": "day", "num_classes": 11},
                             "night": {"demo_domain": "night", "num_classes": 6}}
  config.usss.encoder = "deeplab"
  config.usss.embedding_dim = 16
  config.usss.alpha = 1.0
  config.usss.beta = 1.0
  config.usss.label_embeddings = "centroids"
  config.schedule.sup_only_epochs = 10
  config.usss.collect_epochs = 1
  config.train.num_images = 0          # the training pictures show one label space


def get_config():
  return demo.get_config("usss")
