#!/usr/bin/env python3
"""Writes pipelines/data/chat.jsonl: the multi-turn chat dataset of pipelines/chat.yaml.

A fortune teller's conversations in OpenAI `messages` form, made here (no outside data): 220
conversations, Chinese and English, 1-3 user/assistant exchanges (2-6 turns), some with a system
message, built from the phrase tables below with a fixed seed (the same file every run), plus six
damaged lines that fix-json reports and drops: an unknown role, non-string content, an empty
conversation, one that ends with the user, a missing `messages` field, and broken JSON.

    python3 scripts/make_chat_dataset.py [OUT]
"""
import json
import random
import sys

ZH = {
    "system": "你是一位神秘的算命大师, 说话古雅, 先问清缘由再作答。",
    "topics": ["事业", "财运", "姻缘", "健康", "学业", "出行"],
    "ask": [
        "大师, 我想问问今年的{t}如何?",
        "最近{t}上总不顺, 您帮我看看?",
        "我{a}岁, 属{z}, {t}方面该注意什么?",
        "听说您算得准, 能说说我下个月的{t}吗?",
    ],
    "answer": [
        "老夫观你气色, {t}上先抑后扬。{m}月之后自有转机, 切记{v}。",
        "你命中{t}有贵人相助, 只是时机未到。这{m}个月里宜{v}。",
        "{t}之事, 急不得。依老夫之见, 宜{v}, 方能逢凶化吉。",
        "卦象显示, 你的{t}如溪水入江, 小有波折而终有所成。记得{v}。",
    ],
    "follow": [
        "那具体该怎么做呢?",
        "有没有什么要避开的?",
        "大师, 能再说得细一点吗?",
        "谢谢大师, 还有别的提醒吗?",
    ],
    "follow_answer": [
        "每逢初一十五, 静心自省, {v}。不可贪快, 否则前功尽弃。",
        "避开{d}方向的远行, 多与{p}往来, 自然顺遂。",
        "老夫只能点到为止: {v}, 其余天机不可泄露。",
    ],
    "advice": ["早起勤勉", "多行善事", "少言多听", "守住本心", "量入为出", "广结善缘"],
    "dirs": ["东", "南", "西", "北"],
    "people": ["长辈", "旧友", "同乡", "师长"],
    "zodiac": ["鼠", "牛", "虎", "兔", "龙", "蛇", "马", "羊", "猴", "鸡", "狗", "猪"],
}

EN = {
    "system": "You are a mysterious fortune teller. Speak in an old-fashioned way and give one piece of advice.",
    "topics": ["career", "money", "love life", "health", "studies", "travels"],
    "ask": [
        "Master, how will my {t} go this year?",
        "Things keep going wrong with my {t}. Can you take a look?",
        "I am {a} and born in the year of the {z}. What should I watch for in my {t}?",
        "They say you see clearly. What does next month hold for my {t}?",
    ],
    "answer": [
        "I read in your face that your {t} dips before it rises. After {m} months a door opens; remember to {v}.",
        "A helper waits in your {t}, but the hour has not come. For these {m} months, {v}.",
        "Your {t} cannot be hurried. As I see it, {v}, and ill luck will turn to good.",
        "The signs show your {t} like a stream meeting the river: small bends, then success. {V}.",
    ],
    "follow": [
        "What exactly should I do?",
        "Is there anything I should avoid?",
        "Could you say a little more?",
        "Thank you, master. Any other advice?",
    ],
    "follow_answer": [
        "On the first and fifteenth of each month, sit quietly and {v}. Do not rush, or all is lost.",
        "Avoid long journeys to the {d}, and spend time with {p}; things will go smoothly.",
        "I may only hint: {v}. The rest is heaven's secret.",
    ],
    "advice": ["rise early", "do good deeds", "speak less and listen more", "keep your heart steady", "spend within your means", "make friends widely"],
    "dirs": ["east", "south", "west", "north"],
    "people": ["your elders", "old friends", "people from your hometown", "your teachers"],
    "zodiac": ["rat", "ox", "tiger", "rabbit", "dragon", "snake", "horse", "goat", "monkey", "rooster", "dog", "pig"],
}


def conversation(rng, lang):
    t = rng.choice(lang["topics"])
    msgs = []
    if rng.random() < 0.3:
        msgs.append({"role": "system", "content": lang["system"]})
    fill = dict(
        t=t,
        a=rng.randint(18, 70),
        z=rng.choice(lang["zodiac"]),
        m=rng.randint(2, 9),
        d=rng.choice(lang["dirs"]),
        p=rng.choice(lang["people"]),
    )
    v = rng.choice(lang["advice"])
    fill.update(v=v, V=v[0].upper() + v[1:])
    msgs.append({"role": "user", "content": rng.choice(lang["ask"]).format(**fill)})
    msgs.append({"role": "assistant", "content": rng.choice(lang["answer"]).format(**fill)})
    for _ in range(rng.randint(0, 2)):
        fill["v"] = rng.choice(lang["advice"])
        msgs.append({"role": "user", "content": rng.choice(lang["follow"])})
        msgs.append({"role": "assistant", "content": rng.choice(lang["follow_answer"]).format(**fill)})
    return {"messages": msgs}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "pipelines/data/chat.jsonl"
    rng = random.Random(20261207)
    lines = [json.dumps(conversation(rng, ZH if i % 2 == 0 else EN), ensure_ascii=False) for i in range(220)]
    damaged = [
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}',
        '{"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "?"}]}',
        '{"messages": []}',
        '{"messages": [{"role": "assistant", "content": "你好"}, {"role": "user", "content": "算一卦"}]}',
        '{"conversation": [{"role": "user", "content": "wrong field"}]}',
        '{"messages": [{"role": "user", "content": "broken',
    ]
    for k, d in enumerate(damaged):
        lines.insert(17 + 31 * k, d)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
