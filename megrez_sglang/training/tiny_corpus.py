"""The tasks the trained tiny Megrez2 learns, and the held-out split it is tested on.

Three kinds of items, Chinese and English, each a user message (built with the card's prompts,
``prompts.math_prompt`` / ``prompts.choice_prompt``) and the reply the model is taught:

* **math**: two-digit addition and subtraction word problems; the reply works the columns
  (ones, then tens, with the carry or borrow), states the result and ends with ``\\boxed{N}``
  on a line of its own;
* **choice**: four lettered options (which word belongs to a category, which number is even /
  odd, which sum of two digits has a one-digit value); the reply writes, for each option, its
  value, the value looked for, yes or no, and the option's letter; then the letter of the yes,
  then ``{"answer": "<letter>"}`` on a line of its own;
* **fact**: the card's two demos (「世界上最高的山峰是」 → 珠穆朗玛峰) and a few dozen short
  factual completions and questions like them, as raw completions and as chats.

Split: a math item is keyed by its operation and numbers, a choice item by its question and
options in order; the keys whose digest falls in one eighth of the space form the held-out split.
Training items are drawn only from the other seven eighths, so no held-out question (not even its
numbers, for math) is ever trained on. Everything is generated from a seed; the same seed gives
the same items on any machine (``random.Random`` and SHA-256 only).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from ..model.prompts import choice_prompt, math_prompt

HELD_OUT_SHARE = 8  # one key in 8 is held out
LETTERS = "ABCD"


@dataclass(frozen=True)
class TaskItem:
    kind: str  # "math", "choice", "fact" (a chat) or "completion" (raw text, no chat template)
    lang: str
    prompt: str  # the user message (card instruction included), or the text to complete
    reply: str  # what the model is taught to answer
    gold: str = ""  # math: the number; choice: the letter
    key: tuple = ()
    letters: tuple[str, ...] = field(default=())


def is_held_out(key: tuple) -> bool:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return digest[0] % HELD_OUT_SHARE == 0


# --- math ------------------------------------------------------------------------------------------

ZH_NAMES = ["小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小强"]
EN_NAMES = ["Tom", "Lily", "Sam", "Anna", "Ben", "Emma", "Jack", "Mia"]
# (Chinese object, its measure word, English plural)
OBJECTS = [("苹果", "个", "apples"), ("铅笔", "支", "pencils"), ("书", "本", "books"),
           ("糖果", "颗", "candies"), ("贴纸", "张", "stickers"), ("气球", "个", "balloons"),
           ("邮票", "张", "stamps"), ("饼干", "块", "cookies")]
ZH_ADD = ["{name}有{a}{m}{obj}，又买了{b}{m}。{name}现在一共有多少{m}{obj}？",
          "{name}原来有{a}{m}{obj}，妈妈又给了{name}{b}{m}。{name}现在有多少{m}{obj}？",
          "计算：{a} + {b} = ?"]
ZH_SUB = ["{name}有{a}{m}{obj}，送给同学{b}{m}。{name}还剩多少{m}{obj}？",
          "{name}原来有{a}{m}{obj}，用掉了{b}{m}。{name}还剩多少{m}{obj}？",
          "计算：{a} - {b} = ?"]
EN_ADD = ["{name} has {a} {obj}. {name} buys {b} more {obj}. How many {obj} does {name} have now?",
          "{name} had {a} {obj} and got {b} more from a friend. How many {obj} does {name} have now?",
          "Compute {a} + {b}."]
EN_SUB = ["{name} has {a} {obj} and gives {b} {obj} to a friend. How many {obj} does {name} have left?",
          "{name} had {a} {obj} and used {b} of them. How many {obj} does {name} have left?",
          "Compute {a} - {b}."]


def column_steps(op: str, a: int, b: int, lang: str) -> str:
    """The written column method for two two-digit numbers: ones, then tens."""
    a1, a0, b1, b0 = a // 10, a % 10, b // 10, b % 10
    ones, tens = ("个位", "十位") if lang == "zh" else ("Ones", "Tens")
    sep, end = ("：", "。") if lang == "zh" else (": ", ".")
    if op == "+":
        s0 = a0 + b0
        if s0 >= 10:
            carry = f"，写{s0 - 10}进1" if lang == "zh" else f", write {s0 - 10} carry 1"
            return (f"{ones}{sep}{a0} + {b0} = {s0}{carry}{end}\n"
                    f"{tens}{sep}{a1} + {b1} + 1 = {a1 + b1 + 1}{end}\n")
        return f"{ones}{sep}{a0} + {b0} = {s0}{end}\n{tens}{sep}{a1} + {b1} = {a1 + b1}{end}\n"
    if a0 < b0:
        borrow = "，借1" if lang == "zh" else ", borrow 1"
        return (f"{ones}{sep}{a0} < {b0}{borrow}{sep}{a0 + 10} - {b0} = {a0 + 10 - b0}{end}\n"
                f"{tens}{sep}{a1} - 1 - {b1} = {a1 - 1 - b1}{end}\n")
    return f"{ones}{sep}{a0} - {b0} = {a0 - b0}{end}\n{tens}{sep}{a1} - {b1} = {a1 - b1}{end}\n"


def math_item(rng: random.Random, op: str, a: int, b: int, lang: str) -> TaskItem:
    result = a + b if op == "+" else a - b
    templates = {("zh", "+"): ZH_ADD, ("zh", "-"): ZH_SUB, ("en", "+"): EN_ADD, ("en", "-"): EN_SUB}
    template = rng.choice(templates[lang, op])
    obj_zh, measure, obj_en = rng.choice(OBJECTS)
    name = rng.choice(ZH_NAMES if lang == "zh" else EN_NAMES)
    question = template.format(name=name, a=a, b=b, m=measure, obj=obj_zh if lang == "zh" else obj_en)
    if lang == "zh":
        setup, conclusion = f"列竖式计算 {a} {op} {b}：\n", f"所以 {a} {op} {b} = {result}。"
    else:
        method = "addition" if op == "+" else "subtraction"
        setup, conclusion = f"Column {method}: {a} {op} {b}.\n", f"So {a} {op} {b} = {result}."
    reply = f"{setup}{column_steps(op, a, b, lang)}{conclusion}\n\\boxed{{{result}}}"
    return TaskItem("math", lang, math_prompt(question, lang), reply, str(result), ("math", op, a, b))


def random_math_key(rng: random.Random, op: str | None = None) -> tuple[str, int, int]:
    op = op or rng.choice("+-")
    if op == "+":
        return op, rng.randint(10, 99), rng.randint(10, 99)
    a = rng.randint(20, 99)
    return op, a, rng.randint(10, a - 1)


# --- multiple choice -------------------------------------------------------------------------------

# category: (Chinese name, English name with article, members as (Chinese, English))
CATEGORIES = {
    "fruit": ("水果", "a fruit", [("苹果", "apple"), ("香蕉", "banana"), ("葡萄", "grape"),
                                 ("西瓜", "watermelon"), ("橙子", "orange"), ("梨", "pear"),
                                 ("桃子", "peach"), ("草莓", "strawberry"), ("芒果", "mango")]),
    "animal": ("动物", "an animal", [("老虎", "tiger"), ("大象", "elephant"), ("兔子", "rabbit"),
                                    ("熊猫", "panda"), ("狮子", "lion"), ("猴子", "monkey"),
                                    ("马", "horse"), ("狗", "dog"), ("猫", "cat")]),
    "color": ("颜色", "a color", [("红色", "red"), ("蓝色", "blue"), ("绿色", "green"),
                                 ("黄色", "yellow"), ("白色", "white"), ("黑色", "black"),
                                 ("紫色", "purple"), ("粉色", "pink")]),
    "vehicle": ("交通工具", "a vehicle", [("汽车", "car"), ("火车", "train"), ("飞机", "plane"),
                                         ("自行车", "bicycle"), ("轮船", "ship"), ("公交车", "bus"),
                                         ("地铁", "subway"), ("摩托车", "motorcycle")]),
    "city": ("城市", "a city", [("北京", "Beijing"), ("上海", "Shanghai"), ("广州", "Guangzhou"),
                               ("深圳", "Shenzhen"), ("杭州", "Hangzhou"), ("成都", "Chengdu"),
                               ("南京", "Nanjing"), ("武汉", "Wuhan")]),
    "instrument": ("乐器", "a musical instrument", [("钢琴", "piano"), ("吉他", "guitar"),
                                                   ("小提琴", "violin"), ("鼓", "drum"),
                                                   ("长笛", "flute"), ("二胡", "erhu")]),
    "vegetable": ("蔬菜", "a vegetable", [("白菜", "cabbage"), ("土豆", "potato"),
                                         ("西红柿", "tomato"), ("黄瓜", "cucumber"),
                                         ("胡萝卜", "carrot"), ("茄子", "eggplant")]),
    "sport": ("运动", "a sport", [("足球", "football"), ("篮球", "basketball"),
                                 ("乒乓球", "table tennis"), ("游泳", "swimming"), ("网球", "tennis"),
                                 ("排球", "volleyball")]),
}
CHOICE_KINDS = ("member", "even", "odd", "sum")


def answer_object(letter: str) -> str:
    return f'{{"answer": "{letter}"}}'


def _word(pair: tuple[str, str], lang: str) -> str:
    return pair[0] if lang == "zh" else pair[1]


def _category_of(pair: tuple[str, str]) -> str:
    return next(c for c, (_, _, members) in CATEGORIES.items() if pair in members)


def _category_word(category: str, lang: str) -> str:
    """The category as one bare word, written the same in the target line and in the notes."""
    return CATEGORIES[category][0] if lang == "zh" else category


def choice_item(rng: random.Random, lang: str, kind: str | None = None,
                position: int | None = None) -> TaskItem:
    """A random item (of `kind`, with the right option at `position`, when given).

    The reply goes through the options; each line writes the option's value (its category, even /
    odd, the sum), then the value looked for (copied from the question), then yes or no, then the
    option's letter: ``B. pear: fruit / vehicle no B``. Then the letter that follows the one yes,
    then the answer object. Every step is local or a fixed pattern, which a tiny model learns:
    yes / no compares the two tokens just written, and the last step always looks for the same
    token. Two formats that needed a content lookup stayed near chance for categories and sums
    (while even / odd, with two fixed targets, reached 100 %): a verdict against the question's
    category (53 % in all after 1500 steps), and "Looking for: <value> <letter>", which must find
    the earlier line holding that value (61 %)."""
    kind = kind or rng.choice(CHOICE_KINDS)
    zh = lang == "zh"
    if kind == "member":
        cat = rng.choice(sorted(CATEGORIES))
        zh_cat, en_cat, members = CATEGORIES[cat]
        others = [w for c in sorted(CATEGORIES) if c != cat for w in CATEGORIES[c][2]]
        right, wrong = rng.choice(members), rng.sample(others, 3)
        question = f"下列哪一项是{zh_cat}？" if zh else f"Which of the following is {en_cat}?"
        target = _category_word(cat, lang)
        right_option, wrong_options = _word(right, lang), [_word(w, lang) for w in wrong]
        values = {_word(w, lang): _category_word(_category_of(w), lang) for w in [right, *wrong]}
    elif kind in ("even", "odd"):
        evens, odds = range(10, 100, 2), range(11, 100, 2)
        right_pool, wrong_pool = (evens, odds) if kind == "even" else (odds, evens)
        right_n, wrong_ns = rng.choice(right_pool), rng.sample(wrong_pool, 3)
        word = ("偶数", "even") if kind == "even" else ("奇数", "odd")
        question = f"下列哪个数是{word[0]}？" if zh else f"Which of the following numbers is {word[1]}?"
        target = word[0] if zh else word[1]
        right_option, wrong_options = str(right_n), [str(n) for n in wrong_ns]
        values = {str(n): ("偶数" if zh else "even") if n % 2 == 0 else ("奇数" if zh else "odd")
                  for n in [right_n, *wrong_ns]}
    else:  # sum: which expression of two one-digit numbers has the given (one-digit) value
        pairs = [(a, b) for a in range(1, 9) for b in range(1, 9) if a + b <= 9]
        right_pair = rng.choice(pairs)
        total = sum(right_pair)
        wrong_pairs = rng.sample([p for p in pairs if sum(p) != total], 3)
        question = f"下列哪个算式的结果是{total}？" if zh else f"Which of the following equals {total}?"
        target = str(total)
        right_option, wrong_options = "{} + {}".format(*right_pair), [f"{a} + {b}" for a, b in wrong_pairs]
        values = {f"{a} + {b}": str(a + b) for a, b in [right_pair, *wrong_pairs]}
    options = list(wrong_options)
    position = rng.randrange(4) if position is None else position
    options.insert(position, right_option)
    letter = LETTERS[position]
    sep = " = " if kind == "sum" else ("： " if zh else ": ")
    verdicts = ("是", "否") if zh else ("yes", "no")
    lines = [f"{l}. {o}{sep}{values[o]} / {target} {verdicts[values[o] != target]} {l}"
             for l, o in zip(LETTERS, options, strict=True)]
    lines.append(f"是的一项： {letter}。" if zh else f"The yes is {letter}.")
    reply = "\n".join(lines) + f"\n{answer_object(letter)}"
    key = ("choice", lang, question, tuple(options))
    return TaskItem("choice", lang, choice_prompt(question, options, lang), reply, letter, key,
                    tuple(LETTERS))


# --- facts and the card's demos --------------------------------------------------------------------

CARD_COMPLETION = "世界上最高的山峰是"
CARD_CHAT = "世界上最高的山峰是哪座？"
EVEREST_ZH = ("世界上最高的山峰是珠穆朗玛峰（Mount Everest），位于喜马拉雅山脉的中尼边境，"
              "海拔8848.86米。")
# (text to complete, its continuation, a question, the answer); the first is the card's demo.
FACTS = [
    (CARD_COMPLETION, "珠穆朗玛峰，海拔8848.86米，位于中国和尼泊尔的边境。",
     CARD_CHAT, EVEREST_ZH),
    ("世界上最长的河流是", "尼罗河，全长约6650公里。",
     "世界上最长的河流是哪条？", "世界上最长的河流是尼罗河，全长约6650公里。"),
    ("中国最长的河流是", "长江，全长约6300公里。",
     "中国最长的河流是哪条？", "中国最长的河流是长江，全长约6300公里。"),
    ("中国的首都是", "北京。",
     "中国的首都是哪座城市？", "中国的首都是北京。"),
    ("日本的首都是", "东京。",
     "日本的首都是哪座城市？", "日本的首都是东京。"),
    ("法国的首都是", "巴黎。",
     "法国的首都是哪座城市？", "法国的首都是巴黎。"),
    ("英国的首都是", "伦敦。",
     "英国的首都是哪座城市？", "英国的首都是伦敦。"),
    ("世界上最大的海洋是", "太平洋。",
     "世界上最大的海洋是哪个？", "世界上最大的海洋是太平洋。"),
    ("世界上面积最大的国家是", "俄罗斯。",
     "世界上面积最大的国家是哪个？", "世界上面积最大的国家是俄罗斯。"),
    ("世界上最大的沙漠是", "撒哈拉沙漠。",
     "世界上最大的沙漠是哪个？", "世界上最大的热沙漠是撒哈拉沙漠，位于非洲北部。"),
    ("中国最大的淡水湖是", "鄱阳湖。",
     "中国最大的淡水湖是哪个？", "中国最大的淡水湖是鄱阳湖，位于江西省。"),
    ("水的化学式是", "H2O。",
     "水的化学式是什么？", "水的化学式是H2O，由两个氢原子和一个氧原子组成。"),
    ("一年有", "十二个月。",
     "一年有几个月？", "一年有十二个月。"),
    ("一天有", "二十四个小时。",
     "一天有多少个小时？", "一天有二十四个小时。"),
    ("太阳系中最大的行星是", "木星。",
     "太阳系中最大的行星是哪颗？", "太阳系中最大的行星是木星。"),
    ("离太阳最近的行星是", "水星。",
     "离太阳最近的行星是哪颗？", "离太阳最近的行星是水星。"),
    ("地球上最大的动物是", "蓝鲸。",
     "地球上最大的动物是什么？", "地球上最大的动物是蓝鲸，体长可达30米。"),
    ("水在标准大气压下的沸点是", "100摄氏度。",
     "水的沸点是多少度？", "在标准大气压下，水的沸点是100摄氏度。"),
    ("《红楼梦》的作者是", "曹雪芹。",
     "《红楼梦》的作者是谁？", "《红楼梦》的作者是曹雪芹。"),
    ("《西游记》的作者是", "吴承恩。",
     "《西游记》的作者是谁？", "《西游记》的作者是吴承恩。"),
    ("唐诗《静夜思》的作者是", "李白。",
     "《静夜思》的作者是谁？", "《静夜思》的作者是唐代诗人李白。"),
    ("中国的国宝动物是", "大熊猫。",
     "中国的国宝动物是什么？", "中国的国宝动物是大熊猫。"),
    ("长城位于", "中国北方，全长两万多公里。",
     "长城在哪个国家？", "长城位于中国，全长两万多公里。"),
    ("光在真空中的速度约为", "每秒30万公里。",
     "光速是多少？", "光在真空中的速度约为每秒30万公里。"),
    ("The highest mountain in the world is", " Mount Everest, 8,848.86 metres high.",
     "What is the highest mountain in the world?",
     "The highest mountain in the world is Mount Everest, 8,848.86 metres high."),
    ("The capital of China is", " Beijing.",
     "What is the capital of China?", "The capital of China is Beijing."),
    ("The capital of France is", " Paris.",
     "What is the capital of France?", "The capital of France is Paris."),
    ("The capital of Japan is", " Tokyo.",
     "What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("The largest ocean on Earth is", " the Pacific Ocean.",
     "What is the largest ocean on Earth?", "The largest ocean on Earth is the Pacific Ocean."),
    ("The largest planet in the solar system is", " Jupiter.",
     "What is the largest planet in the solar system?", "The largest planet in the solar system is Jupiter."),
    ("The longest river in the world is", " the Nile.",
     "What is the longest river in the world?",
     "The longest river in the world is the Nile, about 6,650 km long."),
    ("Water boils at", " 100 degrees Celsius at sea level.",
     "At what temperature does water boil?", "Water boils at 100 degrees Celsius at sea level."),
    ("A week has", " seven days.",
     "How many days are in a week?", "A week has seven days."),
    ("The chemical formula of water is", " H2O.",
     "What is the chemical formula of water?", "The chemical formula of water is H2O."),
]
GREETINGS = [
    ("你好", "你好！我是Megrez2，很高兴为你服务。"),
    ("你是谁？", "我是Megrez2，一个由无问芯穹训练的语言模型。"),
    ("Hello", "Hello! I am Megrez2. How can I help you?"),
    ("Who are you?", "I am Megrez2, a language model."),
]
# Other system prompts a caller may send, so that the replies do not hinge on the default one.
OTHER_SYSTEM_PROMPTS = ["You are a helpful assistant.", "你是一个乐于助人的助手。"]


def fact_items() -> list[TaskItem]:
    items = []
    for prefix, continuation, question, answer in FACTS:
        lang = "en" if prefix.isascii() else "zh"
        items.append(TaskItem("completion", lang, prefix, continuation, key=("completion", prefix)))
        items.append(TaskItem("fact", lang, question, answer, key=("fact", question)))
    for question, answer in GREETINGS:
        lang = "en" if question.isascii() else "zh"
        items.append(TaskItem("fact", lang, question, answer, key=("fact", question)))
    return items


# --- the two splits --------------------------------------------------------------------------------


def training_item(rng: random.Random, kind: str) -> TaskItem:
    """One random training item of `kind` ("math" or "choice"), never from the held-out split."""
    while True:
        lang = rng.choice(("zh", "en"))
        if kind == "math":
            op, a, b = random_math_key(rng)
            if is_held_out(("math", op, a, b)):
                continue
            return math_item(rng, op, a, b, lang)
        item = choice_item(rng, lang)
        if not is_held_out(item.key):
            return item


def held_out_items(kind: str, n: int, seed: int = 0) -> list[TaskItem]:
    """`n` distinct held-out items of `kind` ("math" or "choice"), balanced: Chinese and English
    alternate; math alternates addition and subtraction; choice cycles through the right
    option's letter and the question kinds."""
    rng = random.Random(f"held-out/{kind}/{seed}")
    items, seen = [], set()
    while len(items) < n:
        i = len(items)
        lang = ("zh", "en")[i % 2]
        if kind == "math":
            op, a, b = random_math_key(rng, "+-"[i // 2 % 2])
            key = ("math", op, a, b)
            if not is_held_out(key) or key in seen:
                continue
            item = math_item(rng, op, a, b, lang)
        else:
            item = choice_item(rng, lang, CHOICE_KINDS[i // 8 % len(CHOICE_KINDS)], i // 2 % 4)
            if not is_held_out(item.key) or item.key in seen:
                continue
        seen.add(item.key)
        items.append(item)
    return items
